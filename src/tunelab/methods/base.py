"""The method contract and its registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch


class Method(Protocol):
    name: str
    description: str
    default_learning_rate: float

    def apply(self, model: torch.nn.Module, config: Any) -> torch.nn.Module:
        """Make the model trainable under this method; return the model to train."""

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write what this method trained (safetensors) so that `load` can rebuild the tuned model."""

    def load(self, base: torch.nn.Module, directory: Path) -> torch.nn.Module:
        """Rebuild the tuned model from a base model and what `save` wrote."""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    return METHODS[name]


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once (tied embeddings are one tensor)."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
