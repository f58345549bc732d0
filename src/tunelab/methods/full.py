"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.methods.base import register_method


class Full:
    name = "full"
    description = "Every parameter trains; the whole model is saved."
    default_learning_rate = 2e-5

    def apply(self, model: torch.nn.Module, config: Any) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, base: torch.nn.Module, directory: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(directory, dtype=base.dtype)


register_method(Full())
