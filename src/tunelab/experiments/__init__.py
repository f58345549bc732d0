"""Experiments: what is made of several runs, above the single run (`train.run.run`).

Today: repeatability, the same config once per seed in `train.seeds`, every metric as mean and 95%
interval. Each seed's run is a normal run directory (`seed-N/` under the parent); the parent holds
the aggregate summary.json and report.md. `compare` and `sweep` are modules of this package.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.eval.report import fmt, md_table
from tunelab.events import Listener
from tunelab.rundir import choose_run_dir, write_atomic, write_json
from tunelab.scoring.metrics import describe

if TYPE_CHECKING:
    from tunelab.train.run import RunResult


def run_experiment(config: Any, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """What `tunelab run` does with a config: one run, or one per seed when `train.seeds` is set."""
    from tunelab.train.run import run  # not at import time: the CLI's parser imports this package

    if config.train.seeds:
        return run_repeated(config, on_event)
    return run(config, on_event, resume)


def sections(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric groups a summary holds: before, after and each baseline by name."""
    found = {"before": summary.get("before") or {}, "after": summary.get("after") or {}}
    found.update({name: b["metrics"] for name, b in (summary.get("baselines") or {}).items()})
    return found


def t95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with df degrees of freedom."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, df))


def interval(values: list[float]) -> dict[str, float]:
    """Mean and the 95% t-interval of the mean (zero width for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": len(values)}
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{section: {metric: interval}} over the seeds' summaries, for every numeric metric all runs have."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for section in sections(summaries[0]):
        runs = [sections(s).get(section) or {} for s in summaries]
        names = [k for k, v in runs[0].items() 
                 if isinstance(v, (int, float)) and describe(k).compared and all(k in r for r in runs)]
        if names:
            out[section] = {k: interval([float(r[k]) for r in runs]) for k in names}
    return out


def run_repeated(config: Any, on_event: Listener | None = None) -> RunResult:
    """One run per seed, then the parent directory's summary: means in before/after, intervals in `repeat`."""
    from tunelab.train.run import RunResult, run

    parent = choose_run_dir(config)
    results = []
    for seed in config.train.seeds:
        one = config.model_copy(deep=True)
        one.train.seeds, one.train.seed, one.output_dir = None, seed, parent / f"seed-{seed}"
        results.append(run(one, on_event))
    summaries = [r.summary for r in results]
    stats = aggregate(summaries)
    means = {section: {k: v["mean"] for k, v in stats[section].items()} for section in stats}
    baselines = {name: {**b, "metrics": means.get(name, {})} for name, b in (summaries[0].get("baselines") or {}).items()}
    summary = {**summaries[0], "before": means.get("before", {}), "after": means.get("after", {}), "baselines": baselines,
               "repeat": {"seeds": list(config.train.seeds), "runs": [str(r.run_dir) for r in results],
                          "intervals": stats, "diagnoses": [s["diagnosis"]["verdict"] for s in summaries]}}
    summary["zero_shot"] = summary["before"]
    write_json(parent / "summary.json", summary)
    write_atomic(parent / "report.md", repeat_markdown(parent, summary))
    return RunResult(parent, summary)


def interval_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for section, metrics in summary["repeat"]["intervals"].items():
        for name, iv in metrics.items():
            rows.append((section, name, fmt(name, iv["mean"]), f"[{fmt(name, iv['low'])}, {fmt(name, iv['high'])}]"))
    return rows


def repeat_markdown(parent: Path, summary: dict[str, Any]) -> str:
    seeds = summary["repeat"]["seeds"]
    lines = [f"# tunelab repeated run: {parent.name}", "",
             f"The same config with seeds {seeds}; each run's own report is in its seed-N directory.", ""]
    lines += md_table([("", "metric", "mean", "95% interval"), *interval_rows(summary)])
    lines += ["", "Fit per seed: " + ", ".join(f"{s}: {d}" for s, d in zip(seeds, summary["repeat"]["diagnoses"]))]
    return "\n".join(lines) + "\n"
