"""Prefix tuning through PEFT: trained keys and values of virtual tokens in front of every attention layer."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from tunelab.methods._prompt import PromptLearning
from tunelab.methods.base import register_method
from tunelab.settings import Section, register_section


class PrefixTuningSettings(Section):
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Virtual tokens in front of every attention layer.")
    projection: bool = Field(
        True, description="Make the prefix through a trained two-layer MLP (stable; more parameters); off: train "
                          "the keys and values directly, which starts at a far higher loss.")
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of the projection MLP; default: the model's hidden size.")


register_section("prefix_tuning", PrefixTuningSettings)


class PrefixTuning(PromptLearning):
    name = "prefix-tuning"
    description = "Prefix tuning (PEFT): trained keys and values of virtual tokens at every layer; base frozen."
    trains = "per-layer prefix keys and values via an MLP (causal LMs, sequence classifiers)"
    default_learning_rate = 1e-3
    sections = ("prefix_tuning",)
    kinds = ("causal_lm", "sequence_classifier")  # the prefix enters through the attention cache

    def prompt_config(self, model: torch.nn.Module, config: Any, task_type: str) -> Any:
        from peft import PrefixTuningConfig

        s = config.prefix_tuning
        hidden = s.encoder_hidden_size or model.config.get_text_config().hidden_size
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=s.num_virtual_tokens,
                                  prefix_projection=s.projection, encoder_hidden_size=hidden)


register_method(PrefixTuning())
