"""Over- and underfitting, read from the curves (metrics.jsonl) and from train-vs-held-out scores.

Each rule looks at one kind of evidence and returns a finding (diagnosis, evidence with steps and
values) or None; the verdict is overfitting if any rule says so, else underfitting, else a good fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunelab.rundir import read_metrics
from tunelab.tasks.lm import ratio_se

SUGGEST = {
    "overfitting": ["a lower learning rate (train.learning_rate)", "more training data",
                    "a lighter method or a smaller rank (lora.r)"],
    "underfitting": ["more epochs or steps (train.epochs, train.max_steps)", "a higher learning rate",
                     "a larger rank (lora.r) or method=full"],
    "good fit": [],
    "not measured": [],
}
Z = 2.0  # a change must exceed about two standard errors (95%) before it counts as one


class Point(NamedTuple):
    """One logged value; its standard error, epoch and per-row (summed loss, tokens) where the record has them."""

    step: int
    value: float
    se: float | None = None
    epoch: float | None = None
    rows: tuple[list[float], list[int]] | None = None


@dataclass
class Evidence:
    """What the run measured: the logged curves and the train-sample / held-out scores."""

    train_curve: list[Point]
    eval_curve: list[Point]
    train_before: dict[str, float] = field(default_factory=dict)
    train_after: dict[str, float] = field(default_factory=dict)
    held_out_after: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.train_curve = [Point(*p) for p in self.train_curve]  # plain (step, value) tuples are fine too
        self.eval_curve = [Point(*p) for p in self.eval_curve]

    def epochs_trained(self) -> float | None:
        epochs = [p.epoch for p in self.train_curve + self.eval_curve if p.epoch is not None]
        return max(epochs) if epochs else None


Finding = dict[str, Any]
Rule = Callable[[Evidence], "Finding | None"]


def read_curves(metrics_path: Path) -> tuple[list[Point], list[Point]]:
    """(train loss, held-out loss) curves from metrics.jsonl."""
    train, held = [], []
    for record in read_metrics(metrics_path):
        step, epoch = record["step"], record.get("epoch")
        if record.get("train_loss") is not None:
            train.append(Point(step, float(record["train_loss"]), None, epoch))
        if record.get("eval_loss") is not None:
            rows = (record["eval_row_nll"], record["eval_row_tokens"]) if "eval_row_nll" in record else None
            held.append(Point(step, float(record["eval_loss"]), record.get("eval_loss_se"), epoch, rows))
    return train, held


def _at_or_before(curve: list[Point], step: int) -> Point | None:
    earlier = [point for point in curve if point.step <= step]
    return earlier[-1] if earlier else (curve[0] if curve else None)


def paired_se(a: Point, b: Point) -> float | None:
    """Standard error of b.value - a.value over the same held-out rows, from both validations' per-row losses.

    Pairing matters: rows differ far more from each other than from themselves a few steps later, so
    the two validations' own standard errors combined would hide a real rise (a memorising run's held-out
    loss rising 0.55 nats is 0.8 of them).
    """
    if not (a.rows and b.rows and a.rows[1] == b.rows[1] and len(a.rows[1]) > 1):
        return None
    diffs = [after - before for before, after in zip(a.rows[0], b.rows[0])]
    return ratio_se(diffs, a.rows[1], b.value - a.value)


def rise_beyond_noise(low: Point, last: Point, rise: float, floor: float) -> str | None:
    """Why the rise from low to last is more than noise, or None when it may be noise.

    By more than Z standard errors of the paired change where per-row losses were logged. Without
    them, conservatively: by `2 * rise` relative and at least `floor` nats (the quickstart's 60-row
    held-out loss of 0.03 has a standard error of 0.004 at each validation).
    """
    change, noise = last.value - low.value, paired_se(low, last)
    if noise is not None:
        return f"{change / noise:.1f} standard errors" if change > Z * noise else None
    return f"{change:.4f} nats" if change >= max(2 * rise * low.value, floor) else None


def heldout_loss_rose(ev: Evidence, rise: float = 0.05, floor: float = 0.02) -> Finding | None:
    """Held-out loss climbed after its minimum, beyond its noise, while train loss kept falling."""
    if len(ev.eval_curve) < 3:
        return None
    low, last = min(ev.eval_curve, key=lambda p: p.value), ev.eval_curve[-1]
    if last.step == low.step or last.value < low.value * (1 + rise):
        return None
    beyond = rise_beyond_noise(low, last, rise, floor)
    if beyond is None:
        return None
    text = (f"held-out loss reached its minimum {low.value:.4f} at step {low.step}, then rose to {last.value:.4f} "
            f"by step {last.step} (+{100 * (last.value / low.value - 1):.0f}%, {beyond})")
    then, now = _at_or_before(ev.train_curve, low.step), _at_or_before(ev.train_curve, last.step)
    if then and now:
        if now.value >= then.value:
            return None
        text += f" while train loss fell from {then.value:.4f} to {now.value:.4f}"
    return {"diagnosis": "overfitting", "step": low.step, "evidence": text}


def train_heldout_gap(ev: Evidence, ratio: float = 2.0, floor: float = 0.5) -> Finding | None:
    """The model fits its training rows far better than unseen ones: memorisation, beyond the noise of either."""
    train, held = ev.train_after.get("eval_loss"), ev.held_out_after.get("eval_loss")
    if train is None or held is None or held - train < floor or held < ratio * train:
        return None
    se_train, se_held = ev.train_after.get("eval_loss_se"), ev.held_out_after.get("eval_loss_se")
    if se_train is not None and se_held is not None and held - train <= Z * math.hypot(se_train, se_held):
        return None  # different rows, so the two standard errors combine
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
    mark, end = curve[(3 * len(curve)) // 4 - 1], curve[-1]
    if end.value > mark.value * (1 - drop) or mark.value - end.value < min_fall:
        return None
    return {"diagnosis": "underfitting", "step": end.step,
            "evidence": f"train loss was still falling steeply at the end: {mark.value:.4f} at step {mark.step} "
                        f"to {end.value:.4f} at step {end.step} ({100 * (end.value / mark.value - 1):.0f}%)"}


RULES: list[Rule] = [heldout_loss_rose, train_heldout_gap, train_metric_far_above, barely_learned, still_falling]


def stop_sooner(ev: Evidence, findings: list[Finding]) -> str:
    """Fewer epochs when the run trained more than one and the best point is known; never fewer than one."""
    stop = "early stopping (train.early_stopping_patience=2)"
    trained = ev.epochs_trained()
    if trained is not None and trained <= 1.0:
        return (f"{stop}, validating often enough to catch the minimum (train.eval_steps): the run trained only "
                f"{trained:g} epoch, so fewer epochs cannot help")
    steps = {f["step"] for f in findings}
    best = next((p for p in ev.eval_curve if p.step in steps), None)
    if best is None or best.epoch is None:
        return f"fewer epochs (train.epochs) or {stop}"
    return (f"fewer epochs: held-out loss was lowest at step {best.step} (epoch {best.epoch:g}), so "
            f"train.epochs={max(1, math.ceil(best.epoch))} or train.max_steps={best.step}, or {stop}")


def diagnose(ev: Evidence) -> dict[str, Any]:
    """{"verdict", "findings", "suggestions"}: overfitting wins over underfitting when both show."""
    findings = [f for f in (rule(ev) for rule in RULES) if f is not None]
    if not findings and not ev.eval_curve and "eval_loss" not in ev.held_out_after:
        # No held-out loss (online RL has none) and nothing else spoke: "good fit" would claim what was not measured.
        return {"verdict": "not measured", "findings": [{"diagnosis": "not measured", "evidence":
                "the task reports no held-out loss to compare with the training loss"}], "suggestions": []}
    kinds = {f["diagnosis"] for f in findings}
    verdict = next((k for k in ("overfitting", "underfitting") if k in kinds), "good fit")
    chosen = [f for f in findings if f["diagnosis"] == verdict]
    first = [stop_sooner(ev, chosen)] if verdict == "overfitting" else []
    return {"verdict": verdict, "findings": chosen, "suggestions": first + SUGGEST[verdict]}
