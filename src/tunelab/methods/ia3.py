"""IA3 through PEFT: learned vectors that rescale keys, values and the feed-forward input; the base stays frozen."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from tunelab.methods._peft import PeftMethod
from tunelab.methods.base import head_names, register_method
from tunelab.models.loading import ModelSpec
from tunelab.settings import Section, register_section


class Ia3Settings(Section):
    target_modules: list[str] | None = Field(
        None, description="Layers to rescale; default: the architecture's keys, values and feed-forward output "
                          "(PEFT's table: llama k_proj, v_proj, down_proj; bert key, value, output.dense).")
    feedforward_modules: list[str] | None = Field(
        None, description="Which target_modules are feed-forward layers (scaled on their input, not their output); "
                          "default: the architecture's (llama down_proj, bert output.dense), or none when "
                          "target_modules is set.")

    @model_validator(mode="after")
    def _feedforward_is_a_target(self) -> Ia3Settings:
        if self.feedforward_modules is None:
            return self
        if self.target_modules is None:
            raise ValueError("feedforward_modules names some of target_modules: set target_modules too")
        extra = set(self.feedforward_modules) - set(self.target_modules)
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} must also be in target_modules")
        return self


register_section("ia3", Ia3Settings)


class Ia3(PeftMethod):
    name = "ia3"
    description = "IA3 (PEFT): trained vectors rescale attention keys, values and feed-forward activations."
    trains = "scaling vectors on keys, values and feed-forward layers (+ task heads)"
    default_learning_rate = 1e-2
    sections = ("ia3",)
    mergeable = True
    target_key = "ia3.target_modules"

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        from peft import IA3Config

        ia3 = config.ia3
        # A user's own targets with no feed-forward list: PEFT would take its table's, which need not be among them.
        feedforward = [] if ia3.target_modules is not None and ia3.feedforward_modules is None \
            else ia3.feedforward_modules
        return IA3Config(task_type=spec.peft_task_type, target_modules=ia3.target_modules,
                         feedforward_modules=feedforward, modules_to_save=head_names(model, spec) or None)


register_method(Ia3())
