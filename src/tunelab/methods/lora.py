"""LoRA through PEFT: low-rank updates on the chosen linear layers; the base stays frozen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from tunelab.methods.base import Method, head_names, register_method
from tunelab.models.loading import LoadRules, ModelSpec
from tunelab.settings import Section, register_section


class LoraSettings(Section):
    r: int = Field(16, ge=1, description="Rank of the LoRA update.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input (0 is about 20% faster on CPU; "
                                                         "see docs/speed.md).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear.")


register_section("lora", LoraSettings)


class Lora(Method):
    name = "lora"
    description = "Low-rank adapters (PEFT LoRA) on linear layers; base weights frozen."
    trains = "low-rank adapters on linear layers (+ task heads)"
    default_learning_rate = 1e-3  # chosen by measurement on two tasks: see README "Choosing the defaults"
    sections = ("lora",)
    mergeable = True

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        from peft import LoraConfig

        lora = config.lora
        return LoraConfig(task_type=spec.peft_task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, bias="none",
                          modules_to_save=head_names(model, spec) or None)

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, config, spec))

    def load(self, base: torch.nn.Module, directory: Path, spec: ModelSpec, rules: LoadRules) -> torch.nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.merge_and_unload()

    @contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        with model.disable_adapter():
            yield model


register_method(Lora())
