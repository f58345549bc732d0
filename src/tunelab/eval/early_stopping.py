"""Early stopping on a validation metric, with the best trainable weights kept in memory.

Only the trainable tensors are copied (a LoRA adapter is a few MB), so keeping the best costs no disk
and leaves the checkpoint files alone; `restore` puts them back for the final numbers.

On a small validation set a task metric moves in coarse steps (one row of 24 is 4 points of accuracy) and
often stands still while the model is still learning. So the validation loss, which every validation
reports, is the second opinion (a loss counts as lower when it is lower by more than `LEARNING`, relative):
a validation that ties the best metric with a lower loss is the new best, and one whose loss reached a new
low is not counted against the patience. Training stops after `patience` validations in a row that
improved neither. Measured in docs/compare-sweep.md: on a 240-row classification, early stopping on
accuracy alone stopped at 71.7% held-out accuracy where a fixed 3 epochs reached 96.7%.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.scoring.metrics import describe


LOSS = "eval_loss"
LEARNING = 1e-3  # a validation loss this much (relative) below its lowest so far means the model still learns


def lower(loss: float, than: float | None) -> bool:
    """Whether `loss` is lower than `than` (None: nothing to beat) by more than LEARNING, relative."""
    return than is None or loss < than * (1 - LEARNING)


class BestWeights:
    """Watches validations; says stop after `patience` in a row that improved neither the metric nor the
    validation loss (0: never stops)."""

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.higher = describe(metric).higher_is_better
        self.best_value: float | None = None
        self.best_loss: float | None = None    # the validation loss of the best validation
        self.lowest_loss: float | None = None  # the lowest validation loss seen
        self.best_step: int | None = None
        self.bad_rounds = 0
        self.stopped_at: int | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def improved(self, value: float, loss: float | None) -> bool:
        """Better metric, or the same metric at a validation loss lower by more than LEARNING."""
        if self.best_value is None:
            return True
        gain = value - self.best_value if self.higher else self.best_value - value
        if gain > self.min_delta:
            return True
        tied = gain == 0 and self.metric != LOSS
        return tied and loss is not None and self.best_loss is not None and lower(loss, self.best_loss)

    def learning(self, loss: float | None) -> bool:
        """Whether this validation loss is a new low, by more than LEARNING; remembers it."""
        if loss is None:
            return False
        new_low = lower(loss, self.lowest_loss)
        self.lowest_loss = loss if self.lowest_loss is None else min(loss, self.lowest_loss)
        return new_low

    def observe(self, step: int, record: dict[str, Any], model: torch.nn.Module) -> bool:
        """Record one validation; True when training should stop."""
        value = float(record[self.metric])
        loss = float(record[LOSS]) if LOSS in record else None
        learning = self.learning(loss)
        if self.improved(value, loss):
            self.best_value, self.best_loss, self.best_step, self.bad_rounds = value, loss, step, 0
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                            if p.requires_grad}
            return False
        if learning:
            self.bad_rounds = 0
            return False
        self.bad_rounds += 1
        if self.patience and self.bad_rounds >= self.patience:
            self.stopped_at = step
            return True
        return False

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> bool:
        """Put the best weights back; False when there were no validations to choose from."""
        if not self.weights:
            return False
        params = dict(model.named_parameters())
        for name, saved in self.weights.items():
            params[name].copy_(saved.to(params[name].device))
        return True

    def summary(self, final_step: int) -> dict[str, Any]:
        return {"metric": self.metric, "best_value": self.best_value, "best_step": self.best_step,
                "stopped_early_at": self.stopped_at, "final_step": final_step,
                "restored": bool(self.weights) and self.best_step != final_step}
