"""LoRA through PEFT: low-rank updates on the chosen linear layers; the base stays frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.methods.base import register_method


class Lora:
    name = "lora"
    description = "Low-rank adapters (PEFT LoRA) on linear layers; base weights frozen."
    default_learning_rate = 1e-3  # chosen by measurement on two tasks: see README "Choosing the defaults"

    def apply(self, model: torch.nn.Module, config: Any) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, bias="none",
        )
        return get_peft_model(model, peft_config)

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, base: torch.nn.Module, directory: Path) -> torch.nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)


register_method(Lora())
