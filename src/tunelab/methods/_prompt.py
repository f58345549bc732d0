"""What PEFT's prompt-learning methods (prompt, prefix and p-tuning) share: learned virtual tokens in front
of every input, nothing merged into the base weights, and the model kinds they can train here."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.methods._peft import PeftMethod
from tunelab.models.loading import ModelSpec


class PromptLearning(PeftMethod):
    mergeable = False
    # A token classifier's labels would not line up with the virtual tokens PEFT prepends, and an embedding
    # model's pooled output would average them in: neither is wired here.
    kinds = ("causal_lm", "sequence_classifier")
    prepends_inputs = True  # virtual tokens go in front of the input embeddings (prefix tuning: into the cache)

    def check_model(self, model: torch.nn.Module, spec: ModelSpec) -> None:
        from transformers.modeling_layers import GenericForSequenceClassification

        super().check_model(model, spec)
        # PEFT feeds such a model inputs_embeds, so a decoder classifier cannot find each row's last real token
        # and would pool a padding position: refuse rather than train on the wrong token.
        if self.prepends_inputs and isinstance(model, GenericForSequenceClassification):
            raise ConfigError(f'method "{self.name}" cannot train a decoder ({type(model).__name__}) as a classifier: '
                              "PEFT passes it embeddings, so it cannot find each row's last token; use "
                              "method=prefix-tuning or lora, or an encoder model")

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        return self.prompt_config(model, config, task_type=spec.peft_task_type)

    def prompt_config(self, model: torch.nn.Module, config: Any, task_type: str) -> Any:
        """The PEFT config of this prompt-learning method."""
        raise NotImplementedError
