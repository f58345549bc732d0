"""What PEFT's prompt-learning methods (prompt, prefix and p-tuning) share: learned virtual tokens in front
of every input, nothing merged into the base weights, and the model kinds they can train here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.methods._peft import PeftMethod
from tunelab.models.loading import ModelSpec


class PromptLearning(PeftMethod):
    mergeable = False
    # Classifiers: PEFT feeds a decoder classifier embeddings, so it pools a padding position instead of each
    # row's last token, and an encoder's [CLS] pooler reads the first virtual token, not the input; a token
    # classifier's labels would not line up with the prepended positions. Prefix tuning enters through the
    # attention cache instead, so its classifiers see the input as it is (it declares sequence_classifier).
    kinds: tuple[str, ...] = ("causal_lm",)

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        return self.prompt_config(model, config, task_type=spec.peft_task_type)

    def prompt_config(self, model: torch.nn.Module, config: Any, task_type: str) -> Any:
        """The PEFT config of this prompt-learning method."""
        raise NotImplementedError

    @contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        from peft import PeftModelForCausalLM

        # PEFT's switched-off view of prompt learning swaps only the forward: a classifier keeps its trained head
        # (and PEFT 0.21.2 fails restoring a generation hook it never had), so only a causal LM has one here.
        if not isinstance(model, PeftModelForCausalLM):
            raise ConfigError(f'method "{self.name}" has no switched-off view of a classifier (its trained head '
                              "stays on); use a method with an adapter (e.g. lora)")
        with model.disable_adapter():
            yield model
