"""string_check: 1 when the rendered input and reference compare as asked, else 0 (OpenAI's four operations:
eq and ne case-sensitive; like: the input contains the reference; ilike: the same ignoring case)."""

from __future__ import annotations

from typing import Any

from tunelab.graders.base import Graded, GraderType, Options, check_template, one_of, register_grader, rendered

OPERATIONS = {
    "eq": lambda text, ref: text == ref,
    "ne": lambda text, ref: text != ref,
    "like": lambda text, ref: ref in text,
    "ilike": lambda text, ref: ref.casefold() in text.casefold(),
}


def check(spec: dict[str, Any], where: str) -> None:
    check_template(spec, "input", where)
    check_template(spec, "reference", where)
    one_of(f"{where}.operation", spec["operation"], tuple(OPERATIONS))


def grade(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any], options: Options) -> list[Graded]:
    out = []
    for sample, item in zip(samples, items):
        texts = rendered([spec["input"], spec["reference"]], sample, item)
        out.append(texts if isinstance(texts, Graded) else Graded(float(OPERATIONS[spec["operation"]](*texts))))
    return out


register_grader(GraderType("string_check", ("input", "reference", "operation"), (), check, grade))
