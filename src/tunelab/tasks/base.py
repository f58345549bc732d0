"""The task contract and its registry.

A task is one module under `tasks/` per training paradigm: the data formats it takes, its settings
section, the model kind it trains (and heads every method must train and save), which evidence
applies to it, how rows become its trainer's dataset, which trainer it uses (transformers' or a
library's, never a copied loop), and how it scores a model on held-out rows. The run names no task:
it calls these methods in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.models.loading import ModelSpec
from tunelab.settings import require_sections

# Evidence a task may take part in (Task.evidence).
GENERATION = "generation"   # held-out answers are generated, shown as samples
FORGETTING = "forgetting"   # the general-ability probe (needs a causal LM head)


@dataclass
class Scores:
    """A model's numbers on a held-out set, and per-row samples keyed by the row's line in its file."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Baseline:
    """A cheap alternative to tuning, measured on the same held-out rows (e.g. few-shot prompting)."""

    label: str
    scores: Scores
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """A task's data, ready: rows for its trainer, and its own held-out and train-sample sets."""

    train: list[dict[str, Any]]
    held_out: Any
    metrics: list[str]                  # what this run reports (the task's, fitted to the held-out rows)
    train_sample: Any = None
    info: dict[str, Any] = field(default_factory=dict)  # shown in summary.json (e.g. label names)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class Task:
    name: str = ""
    description: str = ""
    formats: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()        # config sections this task reads (valid only with it)
    model_kind: str = "causal_lm"         # a models.loading.KINDS key
    evidence: frozenset[str] = frozenset()
    baseline_names: tuple[str, ...] = ()  # what `baselines` measures, for `tunelab tasks`
    default_metrics: tuple[str, ...] = ()
    chosen_by_auto: bool = True           # False: only `task=<name>` picks it (it shares its formats with another)
    reference_model: bool = False         # trains against a frozen reference (DPO): `tunelab plan` counts it

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        """The model kind to load for these training rows; what it reads from them (a classifier's labels)
        is written into the config, so the saved config.yaml rebuilds the same model."""
        return ModelSpec(self.model_kind)

    def metric_names(self, config: Any) -> list[str]:
        """The config's eval.metrics, else the task's defaults."""
        return list(config.eval.metrics if config.eval.metrics is not None else self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        """Metrics a validation during training can report (early stopping may watch any of them)."""
        return ["eval_loss"]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        """Training rows for the trainer, the held-out set, and a seeded train sample scored the same way."""
        raise NotImplementedError

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> Any:
        """Rows of a held-out file made ready for `validate` and `evaluate` (also used by `tunelab eval`)."""
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: Prepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        """transformers' Trainer on the task's rows and collator; a task with a library trainer overrides this."""
        from transformers import Trainer, TrainingArguments

        return Trainer(model=model, args=TrainingArguments(**args), train_dataset=ListDataset(prepared.train),
                       data_collator=self.collator(tokenizer), callbacks=callbacks)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: Any, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        """Cheap held-out numbers during training: eval_loss at least, plus any metric named in `want`."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: Any, config: Any) -> Scores:
        """The full held-out scoring, before and after training."""
        raise NotImplementedError

    def baselines(self, model: torch.nn.Module, tokenizer: Any, train: Any, held: Any, prepared: Prepared,
                  config: Any, events: Any) -> dict[str, Baseline]:
        """Cheap alternatives measured on the untuned model (few-shot prompting, a linear probe, ...)."""
        return {}

    def batch_multiple(self, config: Any) -> int:
        """Micro-batches must be a multiple of this (e.g. generations per prompt); the OOM back-off keeps it."""
        return 1


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    require_sections(f'task "{task.name}"', task.sections)
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    return TASKS[name]


def task_for_format(fmt: str) -> str | None:
    """The registered task that trains on rows of this format, for task=auto."""
    return next((name for name, task in TASKS.items() if fmt in task.formats and task.chosen_by_auto), None)
