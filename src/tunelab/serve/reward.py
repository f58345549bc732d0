"""A reinforcement job's grader as the rlhf task's reward function (`rlhf.reward_function`).

The job's `tunelab run` starts in the job's folder, where `grader.json` holds the grader and, for each prompt,
the fields of its row (the grader's `item`, as OpenAI's `{{item.*}}` references read them). Each completion is
graded by `tunelab.graders.run_grader`; its reward is the completion's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

GRADER_FILE = "grader.json"


@functools.cache
def _job_grader(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    saved = json.loads((Path(folder) / GRADER_FILE).read_text(encoding="utf-8"))
    return saved["grader"], saved["items"]


def sample_of(text: str) -> dict[str, Any]:
    """A model's answer as OpenAI's graders read it: `{{sample.output_text}}`, and `output_json` when it parses."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return {"output_text": text, "output_json": parsed if isinstance(parsed, dict) else None}


def reward_of(result: Any) -> float:
    """The number a grader's result carries (a bare number, or its `reward`/`score`)."""
    if isinstance(result, dict):
        result = result.get("reward", result.get("score"))
    return float(result)


def grade(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    from tunelab.graders import run_grader
    from tunelab.serve.jobs import prompt_key

    spec, items = _job_grader(str(Path.cwd()))
    rewards = []
    for prompt, completion in zip(prompts, completions):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        rewards.append(reward_of(run_grader(spec, sample_of(text), items.get(prompt_key(prompt), {}))))
    return rewards
