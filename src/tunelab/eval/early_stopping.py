"""Early stopping on a validation metric, with the best trainable weights kept in memory.

Only the trainable tensors are copied (a LoRA adapter is a few MB), so keeping the best costs no disk
and leaves the checkpoint files alone; `restore` puts them back for the final numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.scoring.metrics import describe


class BestWeights:
    """Watches validations; says stop after `patience` ones without improvement (0: never stops)."""

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.higher = describe(metric).higher_is_better
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_rounds = 0
        self.stopped_at: int | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        gain = value - self.best_value if self.higher else self.best_value - value
        return gain > self.min_delta

    def observe(self, step: int, record: dict[str, Any], model: torch.nn.Module) -> bool:
        """Record one validation; True when training should stop."""
        value = float(record[self.metric])
        if self.improved(value):
            self.best_value, self.best_step, self.bad_rounds = value, step, 0
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                            if p.requires_grad}
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
