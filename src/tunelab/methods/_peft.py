"""What every PEFT-backed method shares: wrapping a model (with PEFT's errors told in config terms),
loading a saved adapter, merging, and the switched-off view."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.methods.base import Method
from tunelab.models.loading import LoadRules, ModelSpec


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what target_modules may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name})


def wrap(model: torch.nn.Module, peft_config: Any, key: str) -> torch.nn.Module:
    """get_peft_model; a target that matches no layer is a ConfigError naming `key` and the linear layers."""
    from peft import get_peft_model
    from peft.utils.error import NoMatchingPeftModuleError

    try:
        return get_peft_model(model, peft_config)
    except NoMatchingPeftModuleError:
        targets = peft_config.target_modules
        named = targets if isinstance(targets, str) else ", ".join(sorted(targets))  # PEFT holds them as a set
        raise ConfigError(f"{key}: {named} matches no layer of this model; its linear layers are named "
                          f"{', '.join(linear_module_names(model))}") from None


class PeftMethod(Method):
    """A method whose tuned model is a PeftModel: subclasses say only how to build the PEFT config."""

    target_key = ""  # the config key naming target modules, for errors (e.g. lora.target_modules)
    peft_model = True

    def peft_config(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> Any:
        raise NotImplementedError

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        self.check_model(model, spec)
        return wrap(model, self.peft_config(model, config, spec), self.target_key)

    def load(self, base: torch.nn.Module, directory: Path, spec: ModelSpec, rules: LoadRules) -> torch.nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.mergeable:
            return super().merge(model)
        return model.merge_and_unload()

    @contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        with model.disable_adapter():
            yield model
