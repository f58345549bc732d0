"""The evidence around a run: baselines and probes measured before training, and after it the
comparison, the forgetting change and the fit diagnosis that go into summary.json.

`run()` calls `before_training` on the untuned model and `after_training` on the tuned one; what
lies between (the method, the trainer) is not this module's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.data import Dataset
from tunelab.errors import ConfigError
from tunelab.eval import forgetting
from tunelab.eval.baselines import context_length, few_shot_held_out, mean_shots
from tunelab.eval.diagnosis import Evidence, diagnose, read_curves
from tunelab.eval.early_stopping import BestWeights
from tunelab.eval.evaluate import HeldOut, Scores, score
from tunelab.eval.generate import generate
from tunelab.eval.loss import heldout_loss
from tunelab.eval.metrics import generation_scores


@dataclass
class Baselines:
    """What was measured on the untuned model, kept for the comparison after training."""

    few_shot: Scores | None = None
    few_shot_shots: float = 0.0
    probe_before: dict[str, Any] | None = None
    train_sample: HeldOut | None = None
    train_before: dict[str, float] = field(default_factory=dict)


def before_training(model: torch.nn.Module, tokenizer: Any, task: Any, train_rows: list[dict], eval_data: Dataset,
                    held_out: HeldOut, train_sample: HeldOut | None, config: Any, events: Any) -> Baselines:
    """Few-shot baseline, forgetting probe and train-sample loss, all on the untuned model."""
    out = Baselines(train_sample=train_sample)
    shots = few_shot_held_out(task, train_rows, eval_data, tokenizer, held_out, config, context_length(model))
    if shots is not None and config.eval.generate:
        events.emit("evaluating", which="few-shot", what=f"the {config.eval.few_shot_k}-shot baseline")
        out.few_shot, out.few_shot_shots = score(model, tokenizer, shots, config.eval), mean_shots(shots)
    if config.eval.forgetting_probe:
        events.emit("evaluating", which="probe", what="general ability (forgetting probe)")
        out.probe_before = forgetting.measure(model, tokenizer, config.eval.batch_size, config.eval.forgetting_questions)
    if train_sample is not None and train_sample.encoded:
        out.train_before = heldout_loss(model, train_sample.encoded, train_sample.pad_id, config.eval.batch_size)
    return out


def early_stopping(config: Any, tokenizer: Any, held_out: HeldOut) -> BestWeights | None:
    """A tracker when early stopping is on; generation metrics are measured at each validation if watched."""
    t = config.train
    if not t.early_stopping_patience:
        return None
    if t.best_metric not in ("eval_loss", "perplexity") and not (held_out.cases and config.eval.generate):
        raise ConfigError(f'train.best_metric: "{t.best_metric}" is scored on generations, but this run generates '
                          'none (task without generation, or eval.generate=false); use eval_loss')

    def measure(model: torch.nn.Module) -> dict[str, float]:
        answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], config.eval.max_new_tokens,
                           batch_size=config.eval.batch_size)
        return generation_scores([t.best_metric], answers, [c.reference for c in held_out.cases])

    return BestWeights(t.best_metric, t.early_stopping_patience, measure if held_out.cases else None)


def after_training(model: torch.nn.Module, tokenizer: Any, base: Baselines, before: Scores, after: Scores,
                   config: Any, run_dir: Path, best: BestWeights | None, final_step: int,
                   events: Any) -> dict[str, Any]:
    """summary.json entries: zero_shot, few_shot, forgetting, train_sample, diagnosis, early_stopping."""
    entries: dict[str, Any] = {"zero_shot": before.metrics, "few_shot": None, "forgetting": None,
                               "early_stopping": best.summary(final_step) if best else None}
    if base.few_shot is not None:
        entries["few_shot"] = {**base.few_shot.metrics, "k": config.eval.few_shot_k, "mean_shots": base.few_shot_shots}
    if base.probe_before is not None:
        events.emit("evaluating", which="probe", what="general ability after training (forgetting probe)")
        probe_after = forgetting.measure(model, tokenizer, config.eval.batch_size, config.eval.forgetting_questions)
        entries["forgetting"] = forgetting.compare(base.probe_before, probe_after, config.eval.forgetting_threshold)
    train_after: dict[str, float] = {}
    if base.train_sample is not None and base.train_sample.encoded:
        train_after = score(model, tokenizer, base.train_sample, config.eval).metrics
        entries["train_sample"] = {"rows": len(base.train_sample.encoded), "before": base.train_before,
                                   "after": train_after}
    train_curve, eval_curve = read_curves(run_dir / "metrics.jsonl")
    entries["diagnosis"] = diagnose(Evidence(train_curve, eval_curve, base.train_before, train_after, after.metrics))
    return entries
