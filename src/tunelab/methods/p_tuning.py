"""P-tuning through PEFT: virtual-token embeddings produced by a small trained encoder, before every input."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from tunelab.methods._prompt import PromptLearning
from tunelab.methods.base import register_method
from tunelab.settings import Section, register_section


class PTuningSettings(Section):
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Virtual tokens put before every input.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="Prompt encoder that makes the virtual tokens.")
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of the prompt encoder; default: the model's hidden size.")


register_section("p_tuning", PTuningSettings)


class PTuning(PromptLearning):
    name = "p-tuning"
    description = "P-tuning (PEFT): a small trained encoder makes virtual tokens before every input; base frozen."
    trains = "a prompt encoder making virtual-token embeddings (causal LMs only)"
    default_learning_rate = 1e-3
    sections = ("p_tuning",)

    def prompt_config(self, model: torch.nn.Module, config: Any, task_type: str) -> Any:
        from peft import PromptEncoderConfig

        s = config.p_tuning
        hidden = s.encoder_hidden_size or model.config.get_text_config().hidden_size
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=s.num_virtual_tokens,
                                   encoder_reparameterization_type=s.encoder.upper(), encoder_hidden_size=hidden)


register_method(PTuning())
