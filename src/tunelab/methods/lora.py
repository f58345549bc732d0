"""LoRA through PEFT: low-rank updates on the chosen linear layers; the base stays frozen."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from tunelab.methods._peft import PeftMethod
from tunelab.methods.base import head_names, register_method
from tunelab.models.loading import ModelSpec
from tunelab.settings import Section, register_section

# PEFT's initialisations that leave the base weights untouched (so the switched-off view is the base and the
# saved adapter loads onto a fresh base). pissa, olora, corda, eva and loftq rewrite the base weights or need
# data or a quantized base: see docs/methods-peft.md.
_INITS = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal"}


class LoraSettings(Section):
    r: int = Field(16, ge=1, description="Rank of the LoRA update.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r; rslora: alpha / sqrt(r)).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input; 0.05 costs about 12% of a CPU "
                                                        "step for no measured gain on the quickstart (docs/speed.md).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear.")
    init: Literal[tuple(_INITS)] = Field(
        "default", description="Adapter initialisation (PEFT): default (A Kaiming-uniform, B zero), gaussian "
                               "(A normal, B zero), orthogonal (needs an even r); each starts as the base model.")


    @model_validator(mode="after")
    def _orthogonal_needs_even_rank(self) -> LoraSettings:
        if self.init == "orthogonal" and self.r % 2:
            raise ValueError(f"init=orthogonal pairs the rank's directions: r must be even, got {self.r}")
        return self


register_section("lora", LoraSettings)


class Lora(PeftMethod):
    name = "lora"
    description = "Low-rank adapters (PEFT LoRA) on linear layers; base weights frozen."
    trains = "low-rank adapters on linear layers (+ task heads)"
    default_learning_rate = 1e-3  # chosen by measurement on two tasks: see README "Choosing the defaults"
    sections = ("lora",)
    mergeable = True
    shares_base = True
    target_key = "lora.target_modules"

    def variant(self) -> dict[str, Any]:
        """LoraConfig options that make a LoRA variant (DoRA, rsLoRA)."""
        return {}

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        from peft import LoraConfig

        lora = config.lora
        return LoraConfig(task_type=spec.peft_task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, bias="none", init_lora_weights=_INITS[lora.init],
                          modules_to_save=head_names(model, spec) or None, **self.variant())


register_method(Lora())
