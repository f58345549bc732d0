"""Prompt tuning through PEFT: trained embeddings of a few virtual tokens put before every input."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from tunelab.methods._prompt import PromptLearning
from tunelab.methods.base import register_method
from tunelab.settings import Section, register_section


class PromptTuningSettings(Section):
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Virtual tokens put before every input.")
    init_text: str | None = Field(
        None, description="Start the virtual tokens as this text's token embeddings (repeated or cut to "
                          "num_virtual_tokens); unset: random.")


register_section("prompt_tuning", PromptTuningSettings)


class PromptTuning(PromptLearning):
    name = "prompt-tuning"
    description = "Prompt tuning (PEFT): trained embeddings of virtual tokens before every input; base frozen."
    trains = "virtual-token embeddings (causal LMs only)"
    default_learning_rate = 3e-2
    sections = ("prompt_tuning",)

    def prompt_config(self, model: torch.nn.Module, config: Any, task_type: str) -> Any:
        from peft import PromptTuningConfig

        s = config.prompt_tuning
        text = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": s.init_text,
                "tokenizer_name_or_path": str(model.name_or_path)} if s.init_text else {}
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=s.num_virtual_tokens, **text)


register_method(PromptTuning())
