"""Continued pretraining on raw text: loss on every token, EOS appended so documents end."""

from __future__ import annotations

from tunelab.tasks.base import register_task
from tunelab.tasks.lm import LmTask


class CausalLm(LmTask):
    name = "causal_lm"
    description = "Continued pretraining on raw text (loss on every token); metric: held-out perplexity."
    formats = ("text",)
    default_metrics = ("perplexity",)


register_task(CausalLm())
