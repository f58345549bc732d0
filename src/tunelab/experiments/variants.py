"""Configs made from one user config by changing a few keys (a method, a model, a trial's choices).

Variants start from the settings as the user wrote them (`config.load_raw`), not from the validated
config, so a key the user left out keeps its per-variant default (each method its own learning rate).
"""

from __future__ import annotations

import copy
from typing import Any

from tunelab.config import RunConfig, validate_config
from tunelab.methods import METHODS
from tunelab.settings import SECTIONS
from tunelab.tasks import TASKS


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (`lora.r`) in a raw settings dict, making sections on the way."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def drop_unused_sections(raw: dict[str, Any]) -> None:
    """Remove method and task sections the variant's own method and task do not read, so that
    `method=full` made from a LoRA config is not refused for its `lora:` section."""
    method = METHODS.get(raw.get("method", "lora"))
    task = TASKS.get(raw.get("task", "auto"))
    used = set(method.sections if method else ()) | set(task.sections if task else ())
    task_auto = raw.get("task", "auto") == "auto"
    for key in SECTIONS:
        owned_by_task = any(key in t.sections for t in TASKS.values())
        if key in raw and key not in used and not (task_auto and owned_by_task):
            del raw[key]


def variant_raw(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for key, value in values.items():
        set_key(out, key, value)
    drop_unused_sections(out)
    return out


def variant(raw: dict[str, Any], values: dict[str, Any]) -> RunConfig:
    """The validated config of `raw` with `values` ({dotted key: value}) set."""
    return validate_config(variant_raw(raw, values))
