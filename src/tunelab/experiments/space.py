"""A sweep's search space: `space.yaml` maps config keys to a list of choices or to {low, high, log}.

Every key and every value is checked against the config's own validators before any trial runs, so a
typo or an impossible range fails at once, naming the key and the range the key allows.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tunelab.config import RunConfig, _section_type, describe_options, explain, yaml_error
from tunelab.errors import ConfigError, did_you_mean
from tunelab.experiments.variants import variant
from tunelab.settings import SECTIONS


@dataclass
class Dimension:
    """One searched key: a list of choices, or a numeric range (integer when both ends are integers)."""

    key: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    name: str | None = None  # the study's name for it (default: the key); improve names it per remedy

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    @property
    def param(self) -> str:
        return self.name or self.key

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            # Optuna stores plain values only: a list choice (lora.target_modules) travels as its JSON text
            shown = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in self.choices]
            picked = trial.suggest_categorical(self.param, shown)
            return self.choices[shown.index(picked)]
        if self.integer:
            return trial.suggest_int(self.param, self.low, self.high, log=self.log)
        return trial.suggest_float(self.param, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.low:g} to {self.high:g}" + (" (log scale)" if self.log else "")

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def field_of(key: str) -> FieldInfo | None:
    """The config field a dotted key names (`lora.r`, `train.learning_rate`), or None."""
    model: type[BaseModel] = RunConfig
    *parents, last = key.split(".")
    for part in parents:
        info = model.model_fields.get(part)
        sub = _section_type(info.annotation) if info else None
        if sub is None:
            return None
        model = sub
    return model.model_fields.get(last)


def allowed_range(info: FieldInfo) -> str:
    """What a field accepts, in words: `a number > 0 and < 1`, `one of linear|cosine`, ..."""
    union = get_origin(info.annotation) in (Union, UnionType)
    parts = [a for a in (get_args(info.annotation) if union else (info.annotation,)) if a is not type(None)]
    return " or ".join(part_words(part, info.metadata) for part in parts)


def part_words(part: Any, metadata: list[Any]) -> str:
    if get_origin(part) is Literal:
        return "one of " + "|".join(map(str, get_args(part)))
    if get_origin(part) is Annotated:
        part, *extra = get_args(part)
        metadata = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
    words = {at.Gt: ">", at.Ge: ">=", at.Lt: "<", at.Le: "<="}
    bounds = [f"{words[type(m)]} {getattr(m, type(m).__name__.lower())}" for m in metadata if type(m) in words]
    kind = {int: "an integer", float: "a number", bool: "true|false", str: "a string"}.get(part, "a value")
    return f"{kind} " + " and ".join(bounds) if bounds else kind


def load_space(path: Path, raw: dict[str, Any]) -> list[Dimension]:
    """Read and check a space file against the base settings `raw` (see `config.load_raw`)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: search space file not found")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(path, err)) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of config keys to choices or {{low, high, log}}")
    return [check_dimension(path, raw, parse_dimension(path, str(key), spec)) for key, spec in data.items()]


def parse_dimension(path: Path, key: str, spec: Any) -> Dimension:
    info = field_of(key)
    if info is None or _section_type(info.annotation) is not None:
        known = [k for k, _, _ in describe_options()]
        raise ConfigError(f'{path}: "{key}": not a config key{did_you_mean(key, known)} (tunelab options lists them)')
    if isinstance(spec, list) and spec:
        return Dimension(key, choices=spec)
    if isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log"}:
        return Dimension(key, low=number(spec["low"]), high=number(spec["high"]), log=bool(spec.get("log", False)))
    raise ConfigError(f'{path}: "{key}": expected a list of choices or {{low, high, log}}, got {spec!r}; '
                      f"{key} allows {allowed_range(info)}")


def number(value: Any) -> Any:
    """A numeric string as its number: YAML reads `1e-4` (no dot in the mantissa) as the text "1e-4"."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def check_dimension(path: Path, raw: dict[str, Any], dim: Dimension) -> Dimension:
    """Refuse impossible ranges and any value the key's validator refuses, naming the allowed range."""
    allowed = allowed_range(field_of(dim.key))

    def fail(problem: str) -> ConfigError:
        return ConfigError(f'{path}: "{dim.key}": {problem}; {dim.key} allows {allowed}')

    if dim.choices is None:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (dim.low, dim.high)):
            raise fail(f"low and high must be numbers, got {dim.low!r} and {dim.high!r}")
        if dim.low > dim.high:
            raise fail(f"low {dim.low:g} is above high {dim.high:g}")
        if dim.log and dim.low <= 0:
            raise fail(f"a log range needs low > 0, got {dim.low:g}")
    for value in dim.choices if dim.choices is not None else (dim.low, dim.high):
        problem = refused(raw, dim.key, value)
        if problem:
            raise fail(f"the value {value!r} is refused ({problem})")
    return dim


def refused(raw: dict[str, Any], key: str, value: Any) -> str | None:
    """Why the config refuses `key=value`, or None. A method or task section is checked on its own, so
    `lora.r` is checked even when the base config uses another method."""
    section = key.split(".")[0]
    try:
        if section in SECTIONS and key.count(".") == 1:
            SECTIONS[section].model_validate({**copy.deepcopy(raw.get(section) or {}), key.split(".")[1]: value})
        else:
            variant(raw, {key: value})
    except ValidationError as err:
        return explain(err, {}).replace("config: ", "")
    except ConfigError as err:
        return str(err).replace("config: ", "")
    return None
