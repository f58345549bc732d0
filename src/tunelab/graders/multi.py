"""multi: several graders, keyed by the names `calculate_output` combines, e.g.
`{"type": "multi", "graders": {"exact": {...}, "close": {...}}, "calculate_output": "0.7 * exact + 0.3 * close"}`.
Each sub-grader's reward is a sub-reward; an error of one is reported with the combined grade (its reward 0)."""

from __future__ import annotations

import re
from typing import Any

from tunelab.graders.base import GRADERS, Graded, GraderType, Options, check_grader, fail, register_grader, shown
from tunelab.graders.formula import evaluate, parse_formula

NAME = re.compile(r"[A-Za-z_]\w*")


def check(spec: dict[str, Any], where: str) -> None:
    graders = spec["graders"]
    if not isinstance(graders, dict) or not graders:
        fail(f"{where}.graders", f"expected a non-empty mapping of names to graders, got {shown(graders)}")
    for key, sub in graders.items():
        if not NAME.fullmatch(str(key)):
            fail(f"{where}.graders.{key}", "a grader's key is its name in calculate_output: letters, digits and _, "
                                           "not starting with a digit")
        check_grader(sub, f"{where}.graders.{key}", nested=True)
    formula = spec["calculate_output"]
    if not isinstance(formula, str) or not formula.strip():
        fail(f"{where}.calculate_output", f"expected a formula over {', '.join(graders)}, got {shown(formula)}")
    try:
        parse_formula(formula, list(graders))
    except ValueError as err:
        fail(f"{where}.calculate_output", str(err))


def grade(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any], options: Options) -> list[Graded]:
    graded = {key: GRADERS[sub["type"]].grade(sub, samples, items, options) for key, sub in spec["graders"].items()}
    tree = parse_formula(spec["calculate_output"], list(graded))
    return [combine(tree, {key: results[i] for key, results in graded.items()}) for i in range(len(samples))]


def combine(tree: Any, parts: dict[str, Graded]) -> Graded:
    """One sample's grade from its sub-grades: the formula over their rewards, their errors and token counts."""
    out = Graded(0.0, sub_rewards={key: part.reward for key, part in parts.items()})
    for key, part in parts.items():
        out.errors.update({k: v for k, v in part.errors.items() if v})
        for model, tokens in part.token_usage.items():
            total = out.token_usage.setdefault(model, dict.fromkeys(tokens, 0))
            for k, n in tokens.items():
                total[k] = total.get(k, 0) + n
        if part.details:
            out.details += f"{'; ' if out.details else ''}{key}: {part.details}"
    try:
        out.reward = evaluate(tree, out.sub_rewards)
    except (ArithmeticError, ValueError) as err:
        out.errors["formula_parse_error"] = True
        out.details += f"{'; ' if out.details else ''}calculate_output: {err}"
    return out


register_grader(GraderType("multi", ("graders", "calculate_output"), (), check, grade, nests=False))
