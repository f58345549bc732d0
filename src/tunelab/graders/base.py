"""What every grader type shares: its registry entry, the result of grading one sample, and the checks of a
spec's fields, each failure a ConfigError naming the field's path (`grader.graders.a.operation: ...`)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import ConfigError
from tunelab.graders.template import MissingVariable, render, variables

# OpenAI's metadata.errors: every flag is reported, False unless set; the *_details/_type fields say more.
ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error", "python_grader_runtime_error",
               "python_grader_server_error", "sample_parse_error", "truncated_observation_error",
               "unresponsive_reward_error")
ERROR_DETAILS = ("model_grader_server_error_details", "python_grader_runtime_error_details",
                 "python_grader_server_error_type")


@dataclass
class Graded:
    """One sample's grade: its reward, the error flags set on the way (a failed grade scores 0), a multi
    grader's sub-rewards, and the tokens each judge model read and wrote."""

    reward: float
    errors: dict[str, Any] = field(default_factory=dict)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    token_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    details: str = ""

    @classmethod
    def failed(cls, flag: str, details: str, **more: Any) -> Graded:
        return cls(0.0, {flag: True, **more}, details=details)


@dataclass(frozen=True)
class Options:
    """How graders may run here: python graders only when the caller allows them, within these limits."""

    allow_python: bool = False
    python_seconds: float = 120.0          # OpenAI's limits for a python grader: 2 minutes, 2 GB, 1 GB of disk
    python_memory_bytes: int = 2 << 30
    python_disk_bytes: int = 1 << 30


@dataclass(frozen=True)
class GraderType:
    """One `type` of grader: its fields (besides `type` and `name`), the check of a spec (raising ConfigError
    with the path `where`), and grading a batch of (sample, item) pairs."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    check: Callable[[dict[str, Any], str], None]
    grade: Callable[[dict[str, Any], list[dict[str, Any]], list[Any], Options], list[Graded]]
    nests: bool = True                     # may be one of a multi grader's graders

    @property
    def fields(self) -> tuple[str, ...]:
        return ("type", "name", *self.required, *self.optional)


GRADERS: dict[str, GraderType] = {}


def register_grader(kind: GraderType) -> GraderType:
    GRADERS[kind.name] = kind
    return kind


def fail(where: str, message: str) -> None:
    raise ConfigError(f"{where}: {message}")


def shown(value: Any) -> str:
    """A value as an error message quotes it: strings in double quotes, anything else as JSON, kept short."""
    text = f'"{value}"' if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def one_of(where: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        fail(where, f'expected one of {"|".join(allowed)}, got {shown(value)}{hint}')


def check_fields(spec: dict[str, Any], where: str, kind: GraderType, name_required: bool) -> None:
    """No unknown field, every required one present, and `name` a non-empty string."""
    for key in spec:
        if key not in kind.fields:
            close = difflib.get_close_matches(str(key), kind.fields, n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            fail(f"{where}.{key}", f"unknown field for a {kind.name} grader (expected {', '.join(kind.fields)}){hint}")
    for key in kind.required + (("name",) if name_required else ()):
        if key not in spec:
            fail(f"{where}.{key}", f"required for a {kind.name} grader")
    if "name" in spec and (not isinstance(spec["name"], str) or not spec["name"].strip()):
        fail(f"{where}.name", f"expected a non-empty string, got {shown(spec['name'])}")


def check_template(spec: dict[str, Any], key: str, where: str) -> None:
    """A string field that may hold templates, each a variable under item. or sample."""
    check_text(spec[key], f"{where}.{key}")


def check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        fail(where, f"expected a string (it may hold templates like {{{{ item.answer }}}}), got {shown(value)}")
    try:
        variables(value)
    except ValueError as err:
        fail(where, str(err))


def number(where: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """A real number (not a boolean) within [low, high] where given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        fail(where, f"expected a number, got {shown(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            f">= {low}" if low is not None else f"<= {high}"
        fail(where, f"expected a number {bounds}, got {shown(value)}")
    return float(value)


def rendered(templates: list[str], sample: dict[str, Any], item: Any) -> list[str] | Graded:
    """The templates filled in from this sample and item, or the failed grade naming a missing variable."""
    try:
        return [render(t, {"sample": sample, "item": item}) for t in templates]
    except MissingVariable as err:
        return Graded.failed("invalid_variable_error", f"no value for {{{{ {err.args[0]} }}}}")


def check_grader(spec: Any, where: str, nested: bool = False) -> None:
    """A grader spec at `where` (a multi's sub-graders are `grader.graders.<key>` and need no name)."""
    if not isinstance(spec, dict):
        fail(where, f"expected a grader object with a type, got {shown(spec)}")
    kinds = [k for k, kind in GRADERS.items() if kind.nests or not nested]
    if "type" not in spec:
        fail(f"{where}.type", f"required; expected one of {'|'.join(kinds)}")
    if isinstance(spec["type"], str) and spec["type"] in GRADERS and spec["type"] not in kinds:
        fail(f"{where}.type", f"expected one of {'|'.join(kinds)}, got {shown(spec['type'])} (a multi grader's "
                              "graders cannot be multi graders)")
    one_of(f"{where}.type", spec["type"], kinds)
    kind = GRADERS[spec["type"]]
    check_fields(spec, where, kind, name_required=not nested)
    kind.check(spec, where)
