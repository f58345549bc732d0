"""Continued pretraining on raw text: loss on every token, EOS appended so documents end."""

from __future__ import annotations

from typing import Any

from tunelab.tasks.base import Encoded, GenerationCase, register_task, truncate


class CausalLm:
    name = "causal_lm"
    formats = ("text",)
    generative = False
    default_metrics = ("perplexity",)

    def encode(self, row: dict[str, Any], fmt: str, tokenizer: Any, max_length: int) -> Encoded:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        return truncate(ids, list(ids), max_length)

    def generation_case(self, row: dict[str, Any], fmt: str, tokenizer: Any) -> GenerationCase | None:
        return None


register_task(CausalLm())
