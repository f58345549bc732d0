"""train.epochs=auto: a training budget chosen from the data size, spent only while validation improves.

The budget is a ceiling, not a target: validation runs on a schedule on the task's own metric, training
stops after `PATIENCE` validations without a better value, and the best weights are kept (eval/early_stopping).
Small data gets more passes (each pass teaches less), large data fewer; see docs/compare-sweep.md for the
measurement behind these numbers.
"""

from __future__ import annotations

import math
from typing import Any

TARGET_EXAMPLES = 1000      # examples seen at most, before the epoch bounds apply
MIN_EPOCHS, MAX_EPOCHS = 2, 8
VALIDATIONS_PER_EPOCH = 2
PATIENCE = 2


def auto_epochs(n_rows: int) -> int:
    """Passes over n_rows training rows the budget allows."""
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_EXAMPLES / max(n_rows, 1))))


MIN_METRIC_ROWS = 100  # validation rows below which a generation metric is too coarse to stop on


def watched_metric(config: Any, task: Any, validation_rows: int | None = None) -> str:
    """The task's first metric when a validation can measure it, else the held-out loss. On fewer than
    MIN_METRIC_ROWS validation rows, the loss: one row flips a rate by 1/rows (4 points on 24 rows), so two
    validations of a generation metric differ by noise, where the loss, averaged over every answer token,
    moves smoothly."""
    allowed = task.validation_metrics(config)
    if validation_rows is not None and validation_rows < MIN_METRIC_ROWS:
        return "eval_loss"
    return next((m for m in task.metric_names(config) if m in allowed), "eval_loss")


def auto_length(config: Any) -> bool:
    """Whether the run chooses its own length: epochs=auto and no max_steps."""
    return config.train.epochs == "auto" and config.train.max_steps <= 0


def stops_early(config: Any) -> bool:
    """Whether the run validates to stop early: asked for, or implied by epochs=auto (resolve_epochs)."""
    return config.train.early_stopping_patience > 0 or auto_length(config)


def resolve_epochs(config: Any, task: Any, n_rows: int,
                   validation_rows: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """epochs=auto as numbers: the settings to record in the run's config (dotted keys, so a resume finds the
    same ones; `inputs.resolve` records them) and the chosen budget, or ({...}, None) when the user fixed the
    length. n_rows trains, validation_rows validates. Reads the config, never writes it."""
    t = config.train
    if not auto_length(config):
        return ({"train.epochs": 1.0} if t.epochs == "auto" else {}), None  # max_steps decides; epochs is unread
    per_epoch = math.ceil(n_rows / (t.batch_size * t.grad_accum))
    chosen = {"train.epochs": float(auto_epochs(n_rows)),
              "train.eval_steps": t.eval_steps or max(1, per_epoch // VALIDATIONS_PER_EPOCH),
              "train.early_stopping_patience": t.early_stopping_patience or PATIENCE,
              "train.best_metric": t.best_metric if "best_metric" in t.model_fields_set
              else watched_metric(config, task, validation_rows)}
    budget = {"epochs": chosen["train.epochs"], "max_steps": int(chosen["train.epochs"]) * per_epoch,
              "eval_steps": chosen["train.eval_steps"], "patience": chosen["train.early_stopping_patience"],
              "metric": chosen["train.best_metric"]}
    return chosen, budget
