"""Score a model on held-out rows: loss and perplexity, plus generation metrics for generative tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.eval.generate import generate
from tunelab.eval.loss import heldout_loss
from tunelab.eval.metrics import exact_match, token_f1
from tunelab.tasks.base import Encoded, GenerationCase


@dataclass
class HeldOut:
    """A held-out set prepared once and scored before and after training."""

    encoded: list[Encoded]
    cases: list[GenerationCase]
    pad_id: int


@dataclass
class Scores:
    metrics: dict[str, float]
    samples: list[dict[str, str]] = field(default_factory=list)


def score(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, eval_cfg: Any) -> Scores:
    metrics = heldout_loss(model, held_out.encoded, held_out.pad_id, batch_size=eval_cfg.batch_size)
    samples: list[dict[str, str]] = []
    if held_out.cases and eval_cfg.generate:
        answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], eval_cfg.max_new_tokens,
                           batch_size=eval_cfg.batch_size)
        refs = [c.reference for c in held_out.cases]
        n = len(answers)
        metrics["exact_match"] = sum(exact_match(a, r) for a, r in zip(answers, refs)) / n
        metrics["token_f1"] = sum(token_f1(a, r) for a, r in zip(answers, refs)) / n
        samples = [{"prompt": c.prompt_text, "reference": c.reference, "output": a}
                   for c, a in zip(held_out.cases, answers)]
    return Scores(metrics, samples)
