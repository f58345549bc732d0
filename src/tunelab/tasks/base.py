"""The task contract and its registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

IGNORE = -100


@dataclass
class Encoded:
    """One example ready for the collator: labels are IGNORE wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class GenerationCase:
    """A held-out prompt (token ids as the model saw them in training) and the reference answer.

    `line` is the data file's line of the row it came from (set by whoever read the row): baselines,
    scores and samples are matched on it, never on position, since a row may yield no case.
    """

    prompt_ids: list[int]
    reference: str
    prompt_text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0


class Task(Protocol):
    name: str
    formats: tuple[str, ...]
    generative: bool
    default_metrics: tuple[str, ...]  # reported when the config's eval.metrics is not set

    def encode(self, row: dict[str, Any], fmt: str, tokenizer: Any, max_length: int) -> Encoded: ...

    def generation_case(self, row: dict[str, Any], fmt: str, tokenizer: Any) -> GenerationCase | None: ...


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    return TASKS[name]


def task_for_format(fmt: str) -> str | None:
    """The registered task that trains on rows of this format, for task=auto."""
    return next((name for name, task in TASKS.items() if fmt in task.formats), None)


def truncate(ids: list[int], labels: list[int], max_length: int) -> Encoded:
    cut = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated=cut)
