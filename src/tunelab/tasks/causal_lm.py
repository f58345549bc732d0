"""Continued pretraining on raw text: loss on every token, EOS appended so documents end."""

from __future__ import annotations

from typing import Any

from tunelab.tasks.base import register_task
from tunelab.tasks.lm import Encoded, LmTask, truncate


class CausalLm(LmTask):
    name = "causal_lm"
    description = "Continued pretraining on raw text (loss on every token); metric: held-out perplexity."
    formats = ("text",)
    default_metrics = ("perplexity",)

    def encode(self, row: dict[str, Any], fmt: str, tokenizer: Any, max_length: int) -> Encoded:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        return truncate(ids, list(ids), max_length)


register_task(CausalLm())
