"""Config sections that methods and tasks own, registered beside them.

A method or task declares its settings as a `Section` subclass and registers it under a key (`lora`,
`classify`, ...); `tunelab.config` adds every registered section to the run config, where a section is
valid only when the run's method or task owns it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @classmethod
    def anchor(cls, values: dict[str, Any], base: Path) -> None:
        """Make the file paths among `values`, as written in a YAML file, relative to that file's folder `base`
        (as data paths are), before validation. Most sections name no file."""


SECTIONS: dict[str, type[Section]] = {}


def register_section(key: str, model: type[Section]) -> type[Section]:
    """Register a settings section; two owners may share one key only with the same model."""
    known = SECTIONS.get(key)
    if known is not None and known is not model:
        raise ValueError(f'config section "{key}" is already registered as {known.__name__}')
    SECTIONS[key] = model
    return model


def require_sections(owner: str, keys: tuple[str, ...]) -> None:
    """A method or task may only read sections that are registered (`owner`: e.g. 'method "lora"')."""
    missing = [key for key in keys if key not in SECTIONS]
    if missing:
        raise ValueError(f"{owner} reads unregistered config sections {missing}")


def import_submodules(package: str, path: list[str], skip: set[str]) -> None:
    """Import every module of a registry package (each registers itself), in name order so that the
    registry's order, and so every listing, is stable."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
