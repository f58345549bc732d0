"""The few-shot baseline: k training examples shown in context before each held-out prompt.

Zero-shot is the untuned model on the bare prompt (the run's "before"); few-shot asks whether
in-context examples alone get what tuning gets, on the same held-out rows with the same metrics.
"""

from __future__ import annotations

import random
from typing import Any

from tunelab.data.formats import get_format
from tunelab.tasks.base import Baseline
from tunelab.tasks.lm import GenerationCase, HeldOut, LmTask, score

Row = dict[str, Any]


def draw_demos(train_rows: list[Row], k: int, seed: int) -> list[Row]:
    """k training rows, the same for every held-out prompt, drawn with the run's seed."""
    return random.Random(seed).sample(train_rows, min(k, len(train_rows)))


def few_shot_case(task: LmTask, row: Row, fmt: str, tokenizer: Any, demos: list[Row],
                  budget: int) -> GenerationCase | None:
    """The held-out case with as many demos as fit in `budget` prompt tokens (dropping from the end)."""
    for n in range(len(demos), -1, -1):
        case = task.generation_case(get_format(fmt).with_demos(row, demos[:n]), fmt, tokenizer)
        if case is None or len(case.prompt_ids) <= budget:
            if case is not None:
                case.meta["shots"] = n
            return case
    return None


def few_shot_held_out(task: LmTask, train_rows: list[Row], eval_data: Any, tokenizer: Any, held_out: HeldOut,
                      config: Any, context_tokens: int) -> HeldOut | None:
    """Each held-out case again, built from its own row with k demos; None when the format has no demos."""
    k, fmt = config.eval.few_shot_k, eval_data.format
    if not k or not get_format(fmt).demos or not held_out.cases:
        return None
    demos = draw_demos(train_rows, k, config.train.seed)
    budget = context_tokens - config.eval.max_new_tokens
    row_at = dict(zip(eval_data.lines, eval_data.rows))
    cases = []
    for bare in held_out.cases:
        case = few_shot_case(task, row_at[bare.line], fmt, tokenizer, demos, budget)
        if case is not None:
            case.line = bare.line
            cases.append(case)
    return HeldOut([], cases, held_out.pad_id, held_out.metrics, stop=get_format(fmt).demo_stop)


def few_shot_baseline(task: LmTask, model: Any, tokenizer: Any, train: Any, held: Any, held_out: HeldOut,
                      config: Any, events: Any) -> Baseline | None:
    """The untuned model shown k training rows before each held-out prompt, scored like the tune."""
    shots = few_shot_held_out(task, train.rows, held, tokenizer, held_out, config, context_length(model))
    if shots is None or not config.eval.generate:
        return None
    events.emit("evaluating", which="few-shot", what=f"the {config.eval.few_shot_k}-shot baseline")
    return Baseline(f"{config.eval.few_shot_k}-shot", score(model, tokenizer, shots, config.eval),
                    {"k": config.eval.few_shot_k, "mean_shots": mean_shots(shots)})


def context_length(model: Any, cap: int = 2048) -> int:
    """Tokens a prompt plus its answer may span: the model's window, capped where generation cuts prompts."""
    return min(int(getattr(model.config, "max_position_embeddings", cap) or cap), cap)


def mean_shots(held_out: HeldOut) -> float:
    return sum(c.meta.get("shots", 0) for c in held_out.cases) / max(len(held_out.cases), 1)
