"""rsLoRA through PEFT: LoRA scaled by alpha / sqrt(r) instead of alpha / r, so higher ranks keep learning."""

from __future__ import annotations

from typing import Any

from tunelab.methods.base import register_method
from tunelab.methods.lora import Lora


class Rslora(Lora):
    name = "rslora"
    description = "Rank-stabilised LoRA (PEFT use_rslora): update scaled by alpha / sqrt(r)."
    trains = "low-rank adapters on linear layers (+ task heads)"
    default_learning_rate = 1e-3

    def variant(self) -> dict[str, Any]:
        return {"use_rslora": True}


register_method(Rslora())
