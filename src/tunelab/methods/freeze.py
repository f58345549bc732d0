"""Transfer learning by freezing: the body stays as it is; the last N transformer blocks, and optionally the
output head and the input embedding, train. Only the tensors that trained are saved.

On a model whose output head is tied to its input embedding (Llama, SmolLM2) the head and the embedding
are one tensor: `train_head` then trains the embedding too, and it is counted and saved once.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.methods import _partial
from tunelab.methods.base import register_method
from tunelab.models.loading import ModelSpec
from tunelab.settings import Section, register_section


class FreezeSettings(Section):
    train_last_blocks: int = Field(2, ge=0, description="How many of the last transformer blocks train.")
    train_head: bool = Field(False, description="Train the pretrained output head (a causal LM's lm_head; tied "
                                                "to the input embedding on Llama, so that trains too). A task's "
                                                "new head (a classifier's) always trains.")
    train_embeddings: bool = Field(False, description="Train the input token embedding.")


register_section("freeze", FreezeSettings)


class Freeze(_partial.PartialMethod):
    name = "freeze"
    description = ("Freeze the body; train the last N transformer blocks and/or the output head (tied to the "
                   "input embedding on Llama: training the head trains it, counted once).")
    trains = "last N transformer blocks (+ head/embeddings if asked, + task heads)"
    default_learning_rate = 1e-4
    sections = ("freeze",)
    mergeable = True  # the trained tensors are weights of the plain model

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        settings = config.freeze
        _partial.freeze_all_but_heads(model, spec)
        stack = _partial.blocks(model)
        if settings.train_last_blocks > len(stack):
            raise ConfigError(f"freeze.train_last_blocks={settings.train_last_blocks}, but "
                              f"{type(model).__name__} has {len(stack)} transformer blocks")
        for block in stack[len(stack) - settings.train_last_blocks:]:
            block.requires_grad_(True)
        for wanted, layer in ((settings.train_head, model.get_output_embeddings()),
                              (settings.train_embeddings, model.get_input_embeddings())):
            if wanted and layer is not None:
                layer.requires_grad_(True)
        _partial.require_something_trains(model, "freeze")
        _partial.remember_base(model)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the trained tensors are already the model's weights


register_method(Freeze())
