"""Reward functions the rlhf tests name as `tests.reward_functions:<name>`."""

from __future__ import annotations


def length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def words(prompts, completions, **kwargs):
    return ["many" for _ in completions]


def picky(prompts, completions, **kwargs):
    if any("7" in p for p in prompts):
        raise ValueError("cannot score item 7")
    return [0.0 for _ in completions]


def short(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)
