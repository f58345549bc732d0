"""An improve directory's files: improve.json, best.yaml, trials.csv, report.md/html (findings, remedies on
validation, the winner once on held-out, the trials and Optuna's plots)."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import optuna

from tunelab.eval.report import fmt
from tunelab.experiments.pages import write_pages
from tunelab.experiments.sweep_report import plots, trial_rows
from tunelab.rundir import write_atomic, write_json
from tunelab.scoring.metrics import describe


def versus_words(metric: str, found: dict[str, Any] | None) -> str:
    """A difference with its 95% interval and what it means, or why there is none."""
    if not found:
        return "no interval (too few rows, or a run from before after.json)"
    points = 100 if describe(metric).percent else 1
    unit = " pts" if points == 100 else ""
    return (f"{points * found['difference']:+.4g}{unit} [{points * found['low']:+.4g}, {points * found['high']:+.4g}]"
            f" ({found['direction']})")


def remedy_table(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    metric = summary["metric"]
    rows = [("remedy", "for", "keys searched", "trials", f"best validation {metric}", "vs original [95% CI]",
             "time", "why")]
    for r in summary["remedies"]:
        keys = "; ".join(f"{k}: {v}" for k, v in r["keys"].items())
        trials = f"{r['trials']}" + (f" ({r['pruned']} pruned)" if r["pruned"] else "")
        best = "-" if r["validation"] is None else f"{fmt(metric, r['validation'])} (trial {r['best_trial']})"
        versus = "-" if r["validation"] is None else versus_words(metric, r["versus_original"])
        rows.append((r["remedy"], ", ".join(r["findings"]), keys, trials, best, versus, f"{r['seconds']:.0f} s",
                     r["why"]))
    return rows


def held_out_table(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    held = summary["held_out"]
    rows = [("metric", "original", "improved", "difference [95% CI]")]
    for name, found in held["versus"].items():
        first = found["first"] if found else None
        second = found["second"] if found else None
        rows.append((name, fmt(name, first) if first is not None else "-",
                     fmt(name, second) if second is not None else "-", versus_words(name, found)))
    if held["original_forgetting"] is not None or held["improved_forgetting"] is not None:
        shown = [f"{100 * v:+.1f}%" if v is not None else "-"
                 for v in (held["original_forgetting"], held["improved_forgetting"])]
        rows.append(("general-text perplexity change (forgetting)", *shown, "-"))
    return rows


def intro(summary: dict[str, Any], out: Path) -> list[str]:
    metric, decision, held = summary["metric"], summary["decision"], summary["held_out"]
    lines = [f"Original run: {summary['original_run']}. Findings: "
             + "; ".join(f"{f['kind']} ({f['evidence']})" for f in summary["findings"]) + ".",
             f"Objective: {metric} on validation rows carved from the run's training rows ({summary['direction']}); "
             f"{summary['trials']} remedy trial(s) besides the original's own settings on the same rows; "
             f"{summary['seconds']:.0f} s in all.",
             f"Original on validation: {fmt(metric, decision['original_validation'])}."]
    if decision["kept_original"]:
        lines.append(f"Nothing beat the original: {decision['note']}. best.yaml is the original config.")
    else:
        lines.append(f"Chosen: trial {decision['trial']} ({decision['remedy']}: {decision['values']}), validation "
                     f"{fmt(metric, decision['validation'])}; {decision['note']}.")
        lines.append(f"Held-out, scored once: {metric} {fmt(metric, held['original'])} (original run) → "
                     f"{fmt(metric, held['improved'])} (improved run, retrained on every training row: "
                     f"{summary['improved_run']}).")
    for who in ("original", "improved"):
        said = held.get(f"{who}_prompting")
        lines += [f"Against prompting, the {who} run: {said}"] if said else []
    lines += [f"Note: {note}." for note in summary.get("notes", [])]
    lines.append(f"Config to reuse: {out / 'best.yaml'} (tunelab run {out / 'best.yaml'}).")
    return lines


def write_improve_files(out: Path, study: optuna.Study, summary: dict[str, Any], best_yaml: str) -> None:
    write_atomic(out / "best.yaml", best_yaml)
    rows = trial_rows(study)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    write_atomic(out / "trials.csv", buffer.getvalue())
    tables = {"Remedies, on validation": remedy_table(summary)}
    if not summary["decision"]["kept_original"]:
        tables["The chosen config, once on held-out"] = held_out_table(summary)
    # remedies queued but not reached wait for an improve asked again; they are no trials yet
    tables["Trials"] = [row for row in trial_rows(study, exact=False) if row[1] != "waiting"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = plots(study, out)
    write_pages(out, "report", f"tunelab improve: {Path(summary['original_run']).name}", intro(summary, out),
                tables, images)
    write_json(out / "improve.json", summary)  # last: its presence marks a finished improve
