"""Shipped general-domain data (see shipped/README.md): the forgetting probe's text and questions, and
other text that replay mixes into training."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def _shipped(name: str) -> tuple[dict[str, Any], ...]:
    text = resources.files("tunelab.data.shipped").joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def probe_texts() -> list[str]:
    return [r["text"] for r in _shipped("general_text.jsonl")]


def replay_texts() -> list[str]:
    return [r["text"] for r in _shipped("replay_text.jsonl")]


def probe_questions() -> list[dict[str, Any]]:
    return list(_shipped("general_questions.jsonl"))
