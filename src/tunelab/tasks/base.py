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
from tunelab.scoring.rows import RowValues
from tunelab.settings import require_sections

# Evidence a task may take part in (Task.evidence).
GENERATION = "generation"   # held-out answers are generated, shown as samples
FORGETTING = "forgetting"   # the general-ability probe (needs a causal LM head)


@dataclass
class Scores:
    """A model's numbers on a held-out set, per-row samples keyed by the row's line in its file, each metric row
    by row (`scoring.rows`), from which its comparison with another model gets an interval, and what an answer
    cost."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, RowValues] = field(default_factory=dict)
    cost: dict[str, Any] | None = None  # what an answer cost (scoring.cost), where answers were generated


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

    def resolve(self, config: Any, train: Any) -> dict[str, Any]:
        """Settings this task decides from the training rows before the run starts (a classifier's labels, a
        distillation student), as dotted keys; `inputs.resolve` records them, so config.yaml rebuilds the same
        model. Reads the config, never writes it."""
        return {}

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        """Refuse, before any model loads (and before the run directory is written), settings this task cannot
        train with (ConfigError) and rows of `datasets` (the run's train and held-out files) it cannot read."""

    def runs_read(self, config: Any) -> list[Any]:
        """Run directories this task loads from (a reward run for rlhf): `inputs.resolve` opens each with the one
        reader, config validated and run finished, before this run's directory is written."""
        return []

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        """The model kind to load; what it reads from rows (labels) comes from the config once resolved, else
        from `train`. Pure: it writes nothing."""
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

    def note_before(self, held_out: Any, scores: Scores) -> None:
        """The untuned model's scores on `held_out`, measured now or read back by a resumed run, for a task whose
        later scores are relative to them (distillation's share of the teacher gap closed)."""

    def baselines(self, model: torch.nn.Module, tokenizer: Any, train: Any, held: Any, prepared: Prepared,
                  config: Any, events: Any) -> dict[str, Baseline]:
        """Cheap alternatives measured on the untuned model (few-shot prompting, a linear probe, ...)."""
        return {}

    def batch_multiple(self, config: Any) -> int:
        """Micro-batches must be a multiple of this (e.g. generations per prompt); the OOM back-off keeps it."""
        return 1


ZERO_SHOT = "zero_shot"  # the untuned model on the bare prompt: the run's before, always measured


def wants(config: Any, baseline: str) -> bool:
    """Whether eval.baselines asks for this baseline (unset: every one the task has)."""
    return config.eval.baselines is None or baseline in config.eval.baselines


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
