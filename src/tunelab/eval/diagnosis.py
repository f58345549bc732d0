"""Over- and underfitting, read from the curves (metrics.jsonl) and from train-vs-held-out scores.

Each rule looks at one kind of evidence and returns a finding (diagnosis, evidence with steps and
values) or None; the verdict is overfitting if any rule says so, else underfitting, else a good fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.rundir import read_metrics

SUGGEST = {
    "overfitting": ["fewer epochs (train.epochs) or early stopping (train.early_stopping_patience=2)",
                    "a lower learning rate (train.learning_rate)", "more training data",
                    "a lighter method or a smaller rank (lora.r)"],
    "underfitting": ["more epochs or steps (train.epochs, train.max_steps)", "a higher learning rate",
                     "a larger rank (lora.r) or method=full"],
    "good fit": [],
}


@dataclass
class Evidence:
    """What the run measured: the logged curves and the train-sample / held-out scores."""

    train_curve: list[tuple[int, float]]
    eval_curve: list[tuple[int, float]]
    train_before: dict[str, float] = field(default_factory=dict)
    train_after: dict[str, float] = field(default_factory=dict)
    held_out_after: dict[str, float] = field(default_factory=dict)


Finding = dict[str, Any]
Rule = Callable[[Evidence], "Finding | None"]


def read_curves(metrics_path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train loss, held-out loss) as (step, value) lists from metrics.jsonl."""
    train, held = [], []
    for record in read_metrics(metrics_path):
        if record.get("train_loss") is not None:
            train.append((record["step"], float(record["train_loss"])))
        if record.get("eval_loss") is not None:
            held.append((record["step"], float(record["eval_loss"])))
    return train, held


def _at_or_before(curve: list[tuple[int, float]], step: int) -> tuple[int, float] | None:
    earlier = [point for point in curve if point[0] <= step]
    return earlier[-1] if earlier else (curve[0] if curve else None)


def heldout_loss_rose(ev: Evidence, rise: float = 0.05) -> Finding | None:
    """Held-out loss climbed after its minimum while train loss kept falling."""
    if len(ev.eval_curve) < 3:
        return None
    low_step, low = min(ev.eval_curve, key=lambda p: p[1])
    last_step, last = ev.eval_curve[-1]
    if last_step == low_step or last < low * (1 + rise):
        return None
    text = (f"held-out loss reached its minimum {low:.4f} at step {low_step}, then rose to {last:.4f} "
            f"by step {last_step} (+{100 * (last / low - 1):.0f}%)")
    then, now = _at_or_before(ev.train_curve, low_step), _at_or_before(ev.train_curve, last_step)
    if then and now:
        if now[1] >= then[1]:
            return None
        text += f" while train loss fell from {then[1]:.4f} to {now[1]:.4f}"
    return {"diagnosis": "overfitting", "step": low_step, "evidence": text}


def train_heldout_gap(ev: Evidence, ratio: float = 2.0, floor: float = 0.5) -> Finding | None:
    """The model fits its training rows far better than unseen ones: memorisation."""
    train, held = ev.train_after.get("eval_loss"), ev.held_out_after.get("eval_loss")
    if train is None or held is None or held - train < floor or held < ratio * train:
        return None
    return {"diagnosis": "overfitting", "step": None,
            "evidence": f"after training, loss on train rows is {train:.4f} but on held-out rows {held:.4f} "
                        f"({held / max(train, 1e-9):.1f}x)"}


def train_metric_far_above(ev: Evidence, gap: float = 0.3) -> Finding | None:
    """Exact answers on training rows, much fewer on held-out ones."""
    train, held = ev.train_after.get("exact_match"), ev.held_out_after.get("exact_match")
    if train is None or held is None or train - held < gap:
        return None
    return {"diagnosis": "overfitting", "step": None,
            "evidence": f"exact match {100 * train:.0f}% on train rows vs {100 * held:.0f}% held out"}


def barely_learned(ev: Evidence, min_drop: float = 0.1) -> Finding | None:
    """Loss on the training rows themselves hardly moved: the model has not fitted them yet."""
    before, after = ev.train_before.get("eval_loss"), ev.train_after.get("eval_loss")
    if before is None or after is None or after < before * (1 - min_drop):
        return None
    return {"diagnosis": "underfitting", "step": None,
            "evidence": f"loss on train rows went only from {before:.4f} to {after:.4f} "
                        f"({100 * (after / before - 1):+.1f}%)"}


def still_falling(ev: Evidence, drop: float = 0.2, min_fall: float = 0.05) -> Finding | None:
    """Train loss was still falling steeply over the last quarter of the logged steps.

    The fall must matter in nats too: 0.009 -> 0.004 halves a loss that is already fitted.
    """
    curve = ev.train_curve
    if len(curve) < 4:
        return None
    mark_step, mark = curve[(3 * len(curve)) // 4 - 1]
    end_step, end = curve[-1]
    if end > mark * (1 - drop) or mark - end < min_fall:
        return None
    return {"diagnosis": "underfitting", "step": end_step,
            "evidence": f"train loss was still falling steeply at the end: {mark:.4f} at step {mark_step} "
                        f"to {end:.4f} at step {end_step} ({100 * (end / mark - 1):.0f}%)"}


RULES: list[Rule] = [heldout_loss_rose, train_heldout_gap, train_metric_far_above, barely_learned, still_falling]


def diagnose(ev: Evidence) -> dict[str, Any]:
    """{"verdict", "findings", "suggestions"}: overfitting wins over underfitting when both show."""
    findings = [f for f in (rule(ev) for rule in RULES) if f is not None]
    kinds = {f["diagnosis"] for f in findings}
    verdict = next((k for k in ("overfitting", "underfitting") if k in kinds), "good fit")
    return {"verdict": verdict, "findings": [f for f in findings if f["diagnosis"] == verdict],
            "suggestions": SUGGEST[verdict]}
