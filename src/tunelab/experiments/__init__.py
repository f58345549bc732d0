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

from tunelab.config import dump_config
from tunelab.errors import RunInterrupted
from tunelab.eval.report import fmt, md_table
from tunelab.events import Events, Listener
from tunelab.rundir import FAILED, INTERRUPTED, RUNNING, SUCCEEDED, RunDir, Status, write_atomic
from tunelab.scoring.metrics import describe

if TYPE_CHECKING:
    from tunelab.train.run import RunResult


def run_experiment(config: Any, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """What `tunelab run` does with a config: one run, or one per seed when `train.seeds` is set."""
    from tunelab.train.run import run  # not at import time: the CLI's parser imports this package

    if config.train.seeds:
        return run_repeated(config, on_event, resume)
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


def run_repeated(config: Any, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """One run per seed under a parent directory, then the parent's summary: means in before/after, intervals
    in `repeat`. The parent has a status and a config like a single run, and resumes like one: a seed whose
    run finished is read back, an unfinished one continues from its checkpoint."""
    from tunelab.train.resume import find_run_dir

    from tunelab.train.resume import refuse_foreign

    parent = find_run_dir(config, resume)
    events = Events(on_event)
    refuse_foreign(parent)
    lock = parent.lock()
    try:
        check_parent(parent, config)
        status = Status(parent).begin()
        events.attach_log(parent.event_log())
        parent.write_header(dump_config(config), {})
        status.set(state=RUNNING)
        try:
            result = run_seeds(parent, config, events, on_event)
        except BaseException as err:
            stopped = isinstance(err, (KeyboardInterrupt, RunInterrupted))
            if isinstance(err, RunInterrupted):
                err.run_dir = parent.path  # resuming the parent resumes the seed
            status.end(INTERRUPTED if stopped else FAILED, {"type": type(err).__name__, "message": str(err)})
            raise
        status.end(SUCCEEDED)
        return result
    finally:
        lock.close()


def check_parent(parent: RunDir, config: Any) -> None:
    """A finished parent is kept; one holding other settings is refused (the seeds' own runs check their data)."""
    from tunelab.train.resume import differences, refuse_unusable

    state = parent.state()
    if state is not None:
        refuse_unusable(parent, state)
        changed = differences(parent, config, {})
        if changed:
            raise changed[0]


def run_seeds(parent: RunDir, config: Any, events: Events, on_event: Listener | None) -> RunResult:
    from tunelab.inputs import with_settings
    from tunelab.train.run import RunResult, run

    results = []
    for seed in config.train.seeds:
        seed_dir = RunDir(parent.path / f"seed-{seed}")
        if seed_dir.finished():
            events.emit("seed_reused", seed=seed, run_dir=str(seed_dir))
            results.append(RunResult(seed_dir.path, seed_dir.read_summary()))
            continue
        events.emit("seed_started", seed=seed, of=len(config.train.seeds), run_dir=str(seed_dir))
        one = with_settings(config, {"train.seeds": None, "train.seed": seed, "output_dir": seed_dir.path})
        results.append(run(one, on_event))  # an unfinished seed directory resumes by itself
    summary = repeated_summary(config, results)
    parent.write_summary(summary)
    write_atomic(parent.path / "report.md", repeat_markdown(parent.path, summary))
    events.emit("run_finished", run_dir=str(parent))
    return RunResult(parent.path, summary)


def repeated_summary(config: Any, results: list[Any]) -> dict[str, Any]:
    summaries = [r.summary for r in results]
    stats = aggregate(summaries)
    means = {section: {k: v["mean"] for k, v in stats[section].items()} for section in stats}
    baselines = {name: {**b, "metrics": means.get(name, {})} for name, b in (summaries[0].get("baselines") or {}).items()}
    summary = {**summaries[0], "before": means.get("before", {}), "after": means.get("after", {}), "baselines": baselines,
               "repeat": {"seeds": list(config.train.seeds), "runs": [str(r.run_dir) for r in results],
                          "intervals": stats, "diagnoses": [s["diagnosis"]["verdict"] for s in summaries]}}
    summary["zero_shot"] = summary["before"]
    return summary


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
