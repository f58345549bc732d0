"""The evidence around a run: baselines and probes measured before training, and after it the
comparison, the forgetting change and the fit diagnosis that go into summary.json.

`run()` calls `before_training` on the untuned model and `after_training` on the tuned one; what
lies between (the method, the trainer) is not this module's business. Which evidence applies is the
task's to say (`Task.evidence`, `Task.baselines`); the scoring is the task's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.eval import forgetting, intervals
from tunelab.eval.diagnosis import Evidence, diagnose, read_curves
from tunelab.eval.early_stopping import BestWeights
from tunelab.models.registry import BUNDLED
from tunelab.precision import autocast
from tunelab.rundir import RunDir
from tunelab.scoring import rows
from tunelab.scoring.similar import TFIDF
from tunelab.tasks.base import FORGETTING, ZERO_SHOT, Baseline, Prepared, Scores, Task, wants


@dataclass
class Before:
    """What was measured on the untuned model, kept for the comparison after training."""

    baselines: dict[str, Baseline] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    train_sample: dict[str, float] = field(default_factory=dict)
    train_sample_rows: int = 0


def before_training(model: torch.nn.Module, tokenizer: Any, task: Task, train: Any, held: Any, prepared: Prepared,
                    config: Any, events: Any) -> Before:
    """The task's baselines, the forgetting probe and the train sample's numbers, on the untuned model."""
    out = Before(baselines=task.baselines(model, tokenizer, train, held, prepared, config, events))
    if FORGETTING in task.evidence and config.eval.forgetting_probe:
        events.emit("evaluating", which="probe", what="general ability (forgetting probe)")
        out.probe = forgetting.measure(model, tokenizer, config.eval.batch_size, config.eval.forgetting_questions,
                                       config.eval.generation_batch)
    if prepared.train_sample is not None:
        measured = task.validate(model, tokenizer, prepared.train_sample, config)
        out.train_sample = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
        out.train_sample_rows = min(config.eval.train_sample, len(train.rows))
    return out


def before_record(zero_shot: Scores, before: Before) -> dict[str, Any]:
    """What was measured before training, as JSON (the run directory keeps it, so a resumed run reuses it)."""
    return rows.encode({"zero_shot": scores_record(zero_shot), "probe": before.probe,
                        "baselines": {name: {"label": b.label, "scores": scores_record(b.scores), "details": b.details}
                                      for name, b in before.baselines.items()},
                        "train_sample": before.train_sample, "train_sample_rows": before.train_sample_rows})


def scores_record(scores: Scores) -> dict[str, Any]:
    return {"metrics": scores.metrics, "samples": scores.samples, "rows": scores.rows, "cost": scores.cost}


def before_from_record(record: dict[str, Any]) -> tuple[Scores, Before]:
    """The zero-shot scores and the Before that `before_record` wrote."""
    record = rows.decode(record)
    baselines = {name: Baseline(b["label"], Scores(**b["scores"]), b.get("details") or {})
                 for name, b in record["baselines"].items()}
    return Scores(**record["zero_shot"]), Before(baselines, record.get("probe"), record.get("train_sample") or {},
                                                 int(record.get("train_sample_rows") or 0))


def early_stopping(config: Any, task: Task) -> BestWeights | None:
    """A tracker when early stopping is on, watching a metric the task's validation reports."""
    t = config.train
    if not t.early_stopping_patience:
        return None
    check_best_metric(config, task)
    return BestWeights(t.best_metric, t.early_stopping_patience)


def check_baselines(config: Any, task: Task) -> None:
    """eval.baselines names only baselines this task measures (zero-shot, the run's before, is always one)."""
    known = (ZERO_SHOT, *task.baseline_names)
    for name in config.eval.baselines or ():
        if name not in known:
            raise ConfigError(f'eval.baselines: "{name}" is not a baseline of task "{task.name}"; expected one of '
                              f'{"|".join(known)}')
    ranker = config.eval.retrieval_ranker
    if "retrieval" in task.baseline_names and wants(config, "retrieval") and not known_ranker(ranker):
        raise ConfigError(f'eval.retrieval_ranker: "{ranker}" is neither {TFIDF}, a bundled encoder '
                          f'({"|".join(n for n, m in BUNDLED.items() if m.kind == "encoder")}) nor a directory')


def known_ranker(ranker: str) -> bool:
    """tfidf, a bundled alias (its package may still be missing: then TF-IDF ranks, with a warning) or a directory."""
    return ranker == TFIDF or ranker in BUNDLED or Path(ranker).expanduser().is_dir()


def check_best_metric(config: Any, task: Task) -> None:
    allowed = task.validation_metrics(config)
    if config.train.best_metric not in allowed:
        raise ConfigError(f'train.best_metric: "{config.train.best_metric}" is not measured when task "{task.name}" '
                          f'validates (eval.generate={config.eval.generate}); expected one of {"|".join(allowed)}')


def validation(task: Task, tokenizer: Any, held_out: Any, config: Any,
               best: BestWeights | None) -> Callable[[torch.nn.Module], dict[str, float]]:
    """What a validation during training measures: the task's cheap numbers plus the watched metric (watched
    without early stopping too, so a sweep can prune on it)."""
    watched = best.metric if best is not None else config.train.best_metric
    want = () if watched == "eval_loss" else (watched,)

    def measure(model: torch.nn.Module) -> dict[str, float]:
        with autocast(config.train.precision):  # as before and after training (tunelab.precision)
            return task.validate(model, tokenizer, held_out, config, want)

    return measure


def baseline_entry(baseline: Baseline) -> dict[str, Any]:
    return {"label": baseline.label, "metrics": baseline.scores.metrics, **baseline.details}


def costs(zero_shot: Scores, before: Before, after: Scores) -> dict[str, dict[str, Any]]:
    """What an answer cost in each column that generated its answers: zero_shot, each baseline, tuned."""
    columns = {ZERO_SHOT: zero_shot, **{name: b.scores for name, b in before.baselines.items()}, "tuned": after}
    return {name: scores.cost for name, scores in columns.items() if scores.cost is not None}


def merged_cost(method: Any, model: torch.nn.Module, tokenizer: Any, held_out: Any, config: Any) -> dict | None:
    """What an answer costs from the tuned model merged into its base weights, as `tunelab export` serves it (an
    unmerged adapter adds its own small multiplications to every decoding step); None when the method cannot
    merge or no answer is generated. Merges in place: call it once nothing else needs the adapter."""
    from tunelab.tasks.lm import answer_all

    if not getattr(held_out, "cases", None) or not config.eval.generate:
        return None
    try:
        merged = method.merge(model)
    except ConfigError:  # prompt learning and other methods that cannot merge: served as trained
        return None
    if merged is model:  # nothing to merge (full fine-tuning): the tuned column's timing is the served one
        return None
    # As a model loaded to serve it: CPU autocast keeps one low-precision copy of a weight only where the weight
    # requires grad, and recasts a frozen one at every decoding step (2.4x the seconds per answer on the bundled
    # model, measured interleaved against the base; equal in fp32).
    merged.requires_grad_(True)
    with autocast(config.train.precision):
        return answer_all(merged, tokenizer, held_out, config.eval)[1]


def after_training(model: torch.nn.Module, tokenizer: Any, task: Task, prepared: Prepared, before: Before,
                   zero_shot: Scores, after: Scores, config: Any, run_dir: Path, best: BestWeights | None,
                   final_step: int, events: Any) -> dict[str, Any]:
    """summary.json entries: zero_shot, baselines, comparisons (the tuned model against zero-shot and each
    baseline, with intervals), cost (per answer, each column), forgetting, train_sample, diagnosis,
    early_stopping."""
    others = {"zero_shot": zero_shot, **{name: b.scores for name, b in before.baselines.items()}}
    entries: dict[str, Any] = {"zero_shot": zero_shot.metrics, "forgetting": None,
                               "baselines": {name: baseline_entry(b) for name, b in before.baselines.items()},
                               "comparisons": intervals.comparisons(after, others),
                               "cost": costs(zero_shot, before, after),
                               "early_stopping": best.summary(final_step) if best else None}
    if before.probe is not None:
        events.emit("evaluating", which="probe", what="general ability after training (forgetting probe)")
        probe_after = forgetting.measure(model, tokenizer, config.eval.batch_size, config.eval.forgetting_questions,
                                         config.eval.generation_batch)
        entries["forgetting"] = forgetting.compare(before.probe, probe_after,
                                                   config.eval.forgetting_perplexity_threshold,
                                                   config.eval.forgetting_accuracy_threshold)
    train_after: dict[str, float] = {}
    if prepared.train_sample is not None:
        train_after = task.evaluate(model, tokenizer, prepared.train_sample, config).metrics
        entries["train_sample"] = {"rows": before.train_sample_rows, "before": before.train_sample,
                                   "after": train_after}
    train_curve, eval_curve = read_curves(RunDir(run_dir).metrics_path)
    entries["diagnosis"] = diagnose(Evidence(train_curve, eval_curve, before.train_sample, train_after, after.metrics))
    return entries
