"""Score a model on held-out rows: loss and perplexity, plus the configured generation metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.eval.generate import generate
from tunelab.eval.loss import heldout_loss
from tunelab.eval.metrics import generation_scores
from tunelab.tasks.base import Encoded, GenerationCase


@dataclass
class HeldOut:
    """A held-out set prepared once and scored before and after training."""

    encoded: list[Encoded]
    cases: list[GenerationCase]
    pad_id: int
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "token_f1"])


@dataclass
class Scores:
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)  # one per case, with the row's line


def metric_names(config: Any, task: Any) -> list[str]:
    """The config's eval.metrics, else the task's defaults."""
    return list(config.eval.metrics if config.eval.metrics is not None else task.default_metrics)


def score(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, eval_cfg: Any) -> Scores:
    """Loss metrics over the encoded rows (when any), generation metrics over the cases (when asked)."""
    metrics = heldout_loss(model, held_out.encoded, held_out.pad_id, batch_size=eval_cfg.batch_size) \
        if held_out.encoded else {}
    samples: list[dict[str, Any]] = []
    if held_out.cases and eval_cfg.generate:
        answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], eval_cfg.max_new_tokens,
                           batch_size=eval_cfg.batch_size)
        refs = [c.reference for c in held_out.cases]
        metrics.update(generation_scores(held_out.metrics, answers, refs))
        samples = [{"line": c.line, "prompt": c.prompt_text, "reference": c.reference, "output": a}
                   for c, a in zip(held_out.cases, answers)]
    return Scores(metrics, samples)
