"""The few-shot baselines: k training rows shown in context before each held-out prompt.

Zero-shot is the untuned model on the bare prompt (the run's "before"); the few-shot baselines ask whether
in-context examples alone get what tuning gets, on the same held-out rows with the same metrics. Two
pickers choose the demos, and nothing else differs between them (the formatting and the prompt-token budget
are shared):

- `few_shot`: k random training rows, the same for every prompt, drawn with the run's seed;
- `retrieval`: for each prompt the k training rows most like it (`scoring.similar`: the bundled MiniLM's
  sentence embeddings, or TF-IDF), retrieval-augmented prompting over the training set. The search covers
  the training rows only, never another held-out row.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.data.formats import get_format
from tunelab.scoring.similar import nearest
from tunelab.tasks.base import Baseline, wants
from tunelab.tasks.lm import GenerationCase, HeldOut, LmTask, score

Row = dict[str, Any]
# (training rows, held-out rows, their format, k, config, events) -> each held-out row's demos, most relevant
# first, and details for summary.json
Pick = Callable[[list[Row], list[Row], str, int, Any, Any], tuple[list[list[Row]], dict[str, Any]]]


@dataclass(frozen=True)
class DemoPicker:
    name: str       # the baseline's key in summary.json and eval.baselines
    label: str      # its column header, with {k}
    pick: Pick


def draw_demos(train_rows: list[Row], k: int, seed: int) -> list[Row]:
    """k training rows, the same for every held-out prompt, drawn with the run's seed."""
    return random.Random(seed).sample(train_rows, min(k, len(train_rows)))


def random_demos(train_rows: list[Row], held_rows: list[Row], fmt: str, k: int, config: Any,
                 events: Any) -> tuple[list[list[Row]], dict[str, Any]]:
    demos = draw_demos(train_rows, k, config.train.seed)
    return [demos] * len(held_rows), {}


def retrieved_demos(train_rows: list[Row], held_rows: list[Row], fmt: str, k: int, config: Any,
                    events: Any) -> tuple[list[list[Row]], dict[str, Any]]:
    """Each held-out row's k nearest training rows by their inputs (`Format.query`); the corpus is `train_rows`."""
    shape = get_format(fmt)
    order, ranked_by = nearest([shape.query(r) for r in held_rows], [shape.query(r) for r in train_rows], k,
                               config.eval.retrieval_ranker, config.eval.batch_size, events)
    return [[train_rows[i] for i in picked] for picked in order], {"ranked_by": ranked_by}


PICKERS: dict[str, DemoPicker] = {p.name: p for p in (DemoPicker("few_shot", "{k}-shot", random_demos),
                                                      DemoPicker("retrieval", "{k}-shot retrieved", retrieved_demos))}


def few_shot_case(task: LmTask, row: Row, fmt: str, tokenizer: Any, demos: list[Row], budget: int,
                  end: str | None = None) -> GenerationCase | None:
    """The held-out case with as many demos as fit in `budget` prompt tokens (dropping from the end: the least
    relevant). A prompt too long even alone is kept with none, as zero-shot and the tune see it: every column
    scores the same rows."""
    for n in range(len(demos), -1, -1):
        case = task.generation_case(get_format(fmt).with_demos(row, demos[:n], end), fmt, tokenizer)
        if case is None or len(case.prompt_ids) <= budget or n == 0:
            if case is not None:
                case.meta["shots"] = n
            return case
    return None


def prompt_budget(config: Any, context_tokens: int) -> int:
    """Prompt tokens a few-shot prompt may span: eval.few_shot_tokens within the model's context, less the answer."""
    room = context_tokens - config.eval.max_new_tokens
    return min(config.eval.few_shot_tokens, room) if config.eval.few_shot_tokens else room


def few_shot_held_out(task: LmTask, picker: DemoPicker, train_rows: list[Row], eval_data: Any, tokenizer: Any,
                      held_out: HeldOut, config: Any, context_tokens: int,
                      events: Any = None) -> tuple[HeldOut, dict[str, Any]] | None:
    """Each held-out case again, built from its own row with the demos `picker` chose for it, and the picker's
    details; None when the format has no demos."""
    k, fmt = config.eval.few_shot_k, eval_data.format
    if not k or not get_format(fmt).demos or not held_out.cases:
        return None
    row_at = dict(zip(eval_data.lines, eval_data.rows))
    rows = [row_at[bare.line] for bare in held_out.cases]
    demos, details = picker.pick(train_rows, rows, fmt, k, config, events)
    budget = prompt_budget(config, context_tokens)
    end = held_out.stop[0] if held_out.stop else None  # answers end where they end for zero-shot and the tune
    cases = []
    for bare, row, shown in zip(held_out.cases, rows, demos):
        case = few_shot_case(task, row, fmt, tokenizer, shown, budget, end)
        if case is not None:
            case.line = bare.line
            cases.append(case)
    return HeldOut([], cases, held_out.pad_id, held_out.metrics, stop=held_out.stop,
                   cost_rows=held_out.cost_rows), {**details, "prompt_budget": budget}


def few_shot_baselines(task: LmTask, model: Any, tokenizer: Any, train: Any, held: Any, held_out: HeldOut,
                       config: Any, events: Any) -> dict[str, Baseline]:
    """The untuned model shown k training rows before each held-out prompt, once per picker eval.baselines
    asks for, each scored like the tune."""
    found = {}
    for picker in PICKERS.values():
        if not wants(config, picker.name) or not config.eval.generate:
            continue
        built = few_shot_held_out(task, picker, train.rows, held, tokenizer, held_out, config, context_length(model),
                                  events)
        if built is None:
            continue
        shots, details = built
        label = picker.label.format(k=config.eval.few_shot_k)
        events.emit("evaluating", which=picker.name, what=f"the {label} baseline")
        found[picker.name] = Baseline(label, score(model, tokenizer, shots, config.eval),
                                      {**shots_shown(shots, config.eval.few_shot_k), **details})
    return found


def context_length(model: Any, cap: int = 2048) -> int:
    """Tokens a prompt plus its answer may span: the model's window, capped where generation cuts prompts."""
    return min(int(getattr(model.config, "max_position_embeddings", cap) or cap), cap)


def shots_shown(held_out: HeldOut, k: int) -> dict[str, Any]:
    """k, the mean demos shown per row, and how many rows ran with fewer than k (their prompt and k demos
    did not fit the budget; those with none are scored as zero-shot scores them)."""
    shots = [c.meta.get("shots", 0) for c in held_out.cases]
    return {"k": k, "mean_shots": sum(shots) / max(len(shots), 1), "fewer_shots": sum(n < k for n in shots)}
