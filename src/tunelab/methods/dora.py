"""DoRA through PEFT: LoRA whose update is split into a direction (low-rank) and a per-output magnitude."""

from __future__ import annotations

from typing import Any

from tunelab.methods.base import register_method
from tunelab.methods.lora import Lora


class Dora(Lora):
    name = "dora"
    description = "Weight-decomposed LoRA (PEFT use_dora): low-rank direction plus a trained magnitude per output."
    trains = "low-rank adapters and magnitude vectors on linear layers (+ task heads)"
    default_learning_rate = 1e-3
    shares_base = False  # PEFT 0.21.2 refuses DoRA in a mixed-adapter batch (`adapter_names`)

    def variant(self) -> dict[str, Any]:
        return {"use_dora": True}


register_method(Dora())
