"""A sweep's report: the trials table (trials.csv, report.md/html) and Optuna's plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import optuna

from tunelab.eval.report import fmt
from tunelab.experiments.pages import save_png, write_pages
from tunelab.rundir import write_atomic


def trial_rows(study: optuna.Study, exact: bool = True) -> list[tuple[str, ...]]:
    """The trials table: every digit for trials.csv (exact), four significant ones for the report's page."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = [("trial", "state", "value", *keys, "run directory")]
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4g}"
        if t.state.name == "PRUNED" and t.intermediate_values:
            value = f"pruned at step {t.last_step}"
        rows.append((str(t.number), t.state.name.lower(), value, *(shown(t.params.get(k, "-"), exact) for k in keys),
                     t.user_attrs.get("run_dir", "-")))
    return rows


def shown(value: Any, exact: bool) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not exact else str(value)


MIN_TRIALS_FOR_IMPORTANCE = 3


def importance_withheld(study: optuna.Study) -> str | None:
    """Why parameter importance is not drawn, or None: it is read from how the completed trials' values vary
    with their parameters, so it needs several trials whose values differ."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if len(values) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"Parameter importance is not shown: {len(values)} completed trial(s), and it needs at least "
                f"{MIN_TRIALS_FOR_IMPORTANCE}.")
    if len(set(values)) == 1:
        return (f"Parameter importance is not shown: every completed trial scored {values[0]:.4g}, so no parameter "
                "mattered.")
    return None


def plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optimisation history and parameter importance (when `importance_withheld` finds nothing against it)."""
    from optuna.visualization import matplotlib as ovm

    images = {}
    drawn = [("history", "Optimisation history", ovm.plot_optimization_history)]
    if importance_withheld(study) is None:
        drawn.append(("importance", "Parameter importance", ovm.plot_param_importances))
    for name, caption, draw in drawn:
        try:
            axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # too few finished trials to draw it
        images[caption] = save_png(axes.figure, out / f"{name}.png")
    return images


def write_sweep_report(out: Path, study: optuna.Study, summary: dict[str, Any]) -> None:
    rows = trial_rows(study)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    write_atomic(out / "trials.csv", buffer.getvalue())
    metric, best, default = summary["metric"], summary["best"], summary["default"]
    intro = [f"Objective: {metric} on a validation split carved from the training rows ({summary['direction']}).",
             f"Best: trial {best['trial']} with {best['params']}: validation {fmt(metric, best['validation'])}, "
             f"held-out {fmt(metric, best['held_out'])} (scored once, trained on all training rows).",
             f"Best config, ready for tunelab run: {out / 'best.yaml'}"]
    if default["validation"] is not None or default["held_out"] is not None:
        intro.append(f"Unchanged config: validation {fmt(metric, default['validation'])}, "
                     f"held-out {fmt(metric, default['held_out'])}.")
    intro += [why for why in (importance_withheld(study),) if why]
    space = [("key", "searched over"), *summary["space"].items()]
    write_pages(out, "report", f"tunelab sweep: {summary['study']}", intro,
                {"Search space": space, "Trials": trial_rows(study, exact=False)}, plots(study, out))
