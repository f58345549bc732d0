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


def few_shot_case(task: LmTask, row: Row, fmt: str, tokenizer: Any, demos: list[Row], budget: int,
                  end: str | None = None) -> GenerationCase | None:
    """The held-out case with as many demos as fit in `budget` prompt tokens (dropping from the end). A prompt
    too long even alone is kept with none, as zero-shot and the tune see it: every column scores the same rows."""
    for n in range(len(demos), -1, -1):
        case = task.generation_case(get_format(fmt).with_demos(row, demos[:n], end), fmt, tokenizer)
        if case is None or len(case.prompt_ids) <= budget or n == 0:
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
    end = held_out.stop[0] if held_out.stop else None  # answers end where they end for zero-shot and the tune
    cases = []
    for bare in held_out.cases:
        case = few_shot_case(task, row_at[bare.line], fmt, tokenizer, demos, budget, end)
        if case is not None:
            case.line = bare.line
            cases.append(case)
    return HeldOut([], cases, held_out.pad_id, held_out.metrics, stop=held_out.stop)


def few_shot_baseline(task: LmTask, model: Any, tokenizer: Any, train: Any, held: Any, held_out: HeldOut,
                      config: Any, events: Any) -> Baseline | None:
    """The untuned model shown k training rows before each held-out prompt, scored like the tune."""
    shots = few_shot_held_out(task, train.rows, held, tokenizer, held_out, config, context_length(model))
    if shots is None or not config.eval.generate:
        return None
    events.emit("evaluating", which="few-shot", what=f"the {config.eval.few_shot_k}-shot baseline")
    return Baseline(f"{config.eval.few_shot_k}-shot", score(model, tokenizer, shots, config.eval),
                    shots_shown(shots, config.eval.few_shot_k))


def context_length(model: Any, cap: int = 2048) -> int:
    """Tokens a prompt plus its answer may span: the model's window, capped where generation cuts prompts."""
    return min(int(getattr(model.config, "max_position_embeddings", cap) or cap), cap)


def shots_shown(held_out: HeldOut, k: int) -> dict[str, Any]:
    """k, the mean demos shown per row, and how many rows ran with fewer than k (their prompt and k demos
    did not fit the context; those with none are scored as zero-shot scores them)."""
    shots = [c.meta.get("shots", 0) for c in held_out.cases]
    return {"k": k, "mean_shots": sum(shots) / max(len(shots), 1), "fewer_shots": sum(n < k for n in shots)}
