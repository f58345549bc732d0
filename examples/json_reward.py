"""The rlhf example's reward: 1 for a JSON object naming "name" and "city", 0.5 for any other JSON
object, 0.2 for an answer that at least opens a brace, else 0.

tunelab calls it as TRL does: f(prompts, completions, **kwargs) -> one float per completion; for chat
prompts each completion is [{"role": "assistant", "content": ...}].
"""

from __future__ import annotations

import json
from typing import Any


def text_of(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def score(text: str) -> float:
    try:
        value = json.loads(text.strip())
    except ValueError:
        return 0.2 if text.strip().startswith("{") else 0.0
    if not isinstance(value, dict):
        return 0.0
    return 1.0 if {"name", "city"} <= set(value) else 0.5


def json_object(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    return [score(text_of(c)) for c in completions]
