"""Score a model on held-out rows: loss and perplexity, plus the configured generation metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.eval.generate import generate
from tunelab.eval.loss import heldout_loss
from tunelab.eval.metrics import generation_scores, parse_json
from tunelab.tasks.base import Encoded, GenerationCase


@dataclass
class HeldOut:
    """A held-out set prepared once and scored before and after training."""

    encoded: list[Encoded]
    cases: list[GenerationCase]
    pad_id: int
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "token_f1"])
    stop: tuple[str, ...] = ()  # generation ends at these strings, e.g. the separator between few-shot demos


@dataclass
class Scores:
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)  # one per case, with the row's line


JSON_METRICS = ("json_valid", "json_fields")
LABEL_METRICS = ("accuracy", "macro_f1")
MAX_LABELS = 20  # more distinct answers than this reads as free text, not classes
MAX_LABEL_CHARS = 40


def metric_names(config: Any, task: Any) -> list[str]:
    """The config's eval.metrics, else the task's defaults."""
    return list(config.eval.metrics if config.eval.metrics is not None else task.default_metrics)


def fit_metrics(names: list[str], references: list[str], explicit: bool) -> tuple[list[str], list[str]]:
    """The metrics that mean something for these references, and a message for each change or hint.

    JSON metrics are left out unless at least half the references are JSON objects or arrays (a
    one-word label is never valid JSON). Label-like references get accuracy and macro F1 first in
    the list when the list is the task's default; an explicit eval.metrics is kept and only hinted.
    """
    if not references:
        return names, []
    messages = []
    structured = sum(isinstance(parse_json(r), (dict, list)) for r in references)
    unfit = [n for n in names if n in JSON_METRICS] if 2 * structured < len(references) else []
    if unfit:
        names = [n for n in names if n not in unfit]
        messages.append(f"left out {', '.join(unfit)}: {len(references) - structured} of {len(references)} "
                        "references are not JSON objects or arrays")
    labels = label_set(references)
    missing = [n for n in LABEL_METRICS if n not in names]
    if labels and missing:
        shown = f"{len(labels)} distinct labels ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
        if explicit:
            messages.append(f"the references look like class labels, {shown}; add {', '.join(missing)} to "
                            "eval.metrics to score them as a classification")
        else:
            names = [*missing, *names]
            messages.append(f"scoring as a classification ({', '.join(missing)} added): the references are {shown}")
    return names, messages


def label_set(references: list[str]) -> list[str]:
    """The sorted labels when references are a few short one-line values each seen twice on average, else []."""
    labels = sorted({r.strip() for r in references})
    fits = (len(labels) <= MAX_LABELS and 2 * len(labels) <= len(references)
            and all(label and "\n" not in label and len(label) <= MAX_LABEL_CHARS for label in labels))
    return labels if fits else []


def score(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, eval_cfg: Any) -> Scores:
    """Loss metrics over the encoded rows (when any), generation metrics over the cases (when asked)."""
    metrics = heldout_loss(model, held_out.encoded, held_out.pad_id, batch_size=eval_cfg.batch_size) \
        if held_out.encoded else {}
    samples: list[dict[str, Any]] = []
    if held_out.cases and eval_cfg.generate:
        answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], eval_cfg.max_new_tokens,
                           batch_size=eval_cfg.batch_size, stop=held_out.stop)
        refs = [c.reference for c in held_out.cases]
        metrics.update(generation_scores(held_out.metrics, answers, refs))
        samples = [{"line": c.line, "prompt": c.prompt_text, "reference": c.reference, "output": a}
                   for c, a in zip(held_out.cases, answers)]
    return Scores(metrics, samples)
