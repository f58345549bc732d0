"""Full fine-tuning: every weight trains; the whole model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.methods.base import Method, register_method
from tunelab.models.loading import LoadRules, ModelSpec, load_model


class Full(Method):
    name = "full"
    description = "Every parameter trains; the whole model is saved."
    trains = "all weights"
    default_learning_rate = 2e-5
    mergeable = True

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def load(self, base: torch.nn.Module, directory: Path, spec: ModelSpec, rules: LoadRules) -> torch.nn.Module:
        # What `save` wrote is safetensors; the base's own loading rules still apply to the directory.
        return load_model(directory, spec, rules)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the trained weights are the model


register_method(Full())
