"""Experiments: what is made of several runs, above the single run (`train.run.run`).

Today: repeatability, the same config once per seed in `train.seeds`, every metric as mean and 95%
interval. Each seed's run is a normal run directory (`seed-N/` under the parent); the parent holds
the aggregate summary.json and report.md. Nothing in the aggregate is one seed's alone: metrics, train,
resources, method_info, train_sample, early_stopping and forgetting are means over the seeds (a value
every seed shares is kept as it is), the diagnosis names each seed's verdict, and each comparison in the
verdict is the seeds' mean difference with an interval that holds both kinds of noise (`over_seeds`).
`repeat.intervals` is the spread between seeds alone. `compare` and `sweep` are modules of this package.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import dump_config
from tunelab.errors import RunInterrupted
from tunelab.eval.report import fmt, headline_metric, md_table
from tunelab.eval.worth import weigh
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
    from tunelab.train.resume import find_run_dir, refuse_foreign

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
    summary = summary_over_seeds([r.summary for r in results], list(config.train.seeds),
                                 [str(r.run_dir) for r in results])
    parent.write_summary(summary)
    write_atomic(parent.path / "report.md", repeat_markdown(parent.path, summary))
    events.emit("run_finished", run_dir=str(parent))
    return RunResult(parent.path, summary)


def summary_over_seeds(summaries: list[dict[str, Any]], seeds: list[int], runs: list[str]) -> dict[str, Any]:
    """The seeds' summaries as one: every entry over the seeds (`over_seeds_values`: train, resources,
    method_info, train_sample, ...), before/after/baselines as the metrics' means, the diagnosis per seed,
    forgetting and comparisons with intervals over seeds; `repeat` holds the spread between seeds."""
    stats = aggregate(summaries)
    means = {section: {k: v["mean"] for k, v in stats[section].items()} for section in stats}
    baselines = {name: {**over_seeds_values([(s.get("baselines") or {}).get(name) for s in summaries]),
                        "metrics": means.get(name, {})} for name in (summaries[0].get("baselines") or {})}
    summary = {key: over_seeds_values([s.get(key) for s in summaries]) for key in summaries[0]}
    summary.update(before=means.get("before", {}), after=means.get("after", {}), baselines=baselines,
                   forgetting=forgetting_over_seeds([s.get("forgetting") for s in summaries]),
                   diagnosis=diagnosis_over_seeds([s["diagnosis"] for s in summaries], seeds),
                   comparisons=comparisons_over_seeds([s.get("comparisons") or {} for s in summaries]),
                   repeat={"seeds": seeds, "runs": runs, "intervals": stats,
                           "diagnoses": [s["diagnosis"]["verdict"] for s in summaries]})
    summary["zero_shot"] = summary["before"]
    summary["prompting"] = weigh(summary, headline_metric(summary))  # from the means and the seeds' intervals
    return summary


def over_seeds_values(values: list[Any]) -> Any:
    """One value for the seeds' values: a dict key by key, the mean of numbers that differ, a value they all
    share as it is, else the list of each seed's."""
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: over_seeds_values([v.get(k) for v in values]) for k in keys}
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.fmean(values)
    return values


def combined(differences: list[float], lows: list[float], highs: list[float]) -> tuple[float, float, float]:
    """The mean of the seeds' differences and a 95% interval holding both noises: the spread between seeds
    (Student's t over the seeds) and the held-out sampling each seed's own interval measures (every seed
    scores the same rows, so that part does not shrink with more seeds; its mean half-width is taken), the
    two half-widths added in quadrature."""
    spread = interval(differences)
    sampling = statistics.fmean((high - low) / 2 for low, high in zip(lows, highs))
    half = math.hypot(spread["high"] - spread["mean"], sampling)
    return spread["mean"], spread["mean"] - half, spread["mean"] + half


def comparisons_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each comparison every seed made, as the mean difference with its `combined` interval."""
    from tunelab.eval.intervals import direction

    out: dict[str, dict[str, Any]] = {}
    for other, metrics in per_seed[0].items():
        for name in metrics:
            found = [(c.get(other) or {}).get(name) for c in per_seed]
            if any(f is None for f in found):
                continue
            mean, low, high = combined([f["difference"] for f in found], [f["low"] for f in found],
                                       [f["high"] for f in found])
            c = {"metric": name, "rows": found[0]["rows"], "confidence": found[0]["confidence"], "difference": mean,
                 "low": low, "high": high, "seeds": len(found), "clear": low > 0 or high < 0,
                 "test": "over seeds: the seeds' spread (t) and their held-out intervals, in quadrature"}
            out.setdefault(other, {})[name] = {**c, "direction": direction(name, c)}
    return out


def forgetting_over_seeds(per_seed: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The probe's figures averaged over seeds, each change's interval `combined`; flagged when any seed was."""
    if any(f is None for f in per_seed):
        return None
    out = over_seeds_values(per_seed)
    for measure in ("perplexity", "accuracy"):
        spans = [f.get(f"{measure}_interval") for f in per_seed]
        if all(spans):
            _, low, high = combined([f[f"{measure}_change"] for f in per_seed], [s[0] for s in spans],
                                    [s[1] for s in spans])
            out[f"{measure}_interval"] = [low, high]
    for flag in ("flagged", "perplexity_flagged", "accuracy_flagged"):
        if flag in out:
            out[flag] = any(f.get(flag) for f in per_seed)
    out["remedies"] = list(dict.fromkeys(r for f in per_seed for r in f.get("remedies", [])))
    out["seeds"] = len(per_seed)
    return out


def diagnosis_over_seeds(per_seed: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Each seed's fit verdict, named with its seeds, and every seed's findings and suggestions."""
    verdicts: dict[str, list[int]] = {}
    for seed, d in zip(seeds, per_seed):
        verdicts.setdefault(d["verdict"], []).append(seed)
    verdict = "; ".join(f"{v} in seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"
                        for v, ss in verdicts.items()) if len(verdicts) > 1 else next(iter(verdicts))
    findings = [{**f, "evidence": f"seed {seed}: {f['evidence']}"} for seed, d in zip(seeds, per_seed)
                for f in d["findings"]]
    return {"verdict": verdict, "findings": findings,
            "suggestions": list(dict.fromkeys(x for d in per_seed for x in d["suggestions"])), "per_seed": verdicts}


def interval_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for section, metrics in summary["repeat"]["intervals"].items():
        for name, iv in metrics.items():
            rows.append((section, name, fmt(name, iv["mean"]), f"[{fmt(name, iv['low'])}, {fmt(name, iv['high'])}]"))
    return rows


SPREAD_NOTE = ("The intervals in this table are the spread between seeds only (Student's t); they leave out the "
               "sampling of the held-out rows, which every seed shares. The verdict's intervals hold both.")


def repeat_markdown(parent: Path, summary: dict[str, Any]) -> str:
    from tunelab.eval.report import cost_table, verdict

    seeds = summary["repeat"]["seeds"]
    lines = [f"# tunelab repeated run: {parent.name}", "",
             f"The same config with seeds {seeds}; each run's own report is in its seed-N directory. Every "
             "figure here is a mean over the seeds.", "", "## Verdict", "", *(f"- {s}" for s in verdict(summary)),
             "", "## Over seeds", "", SPREAD_NOTE, ""]
    lines += md_table([("", "metric", "mean", "95% interval over seeds"), *interval_rows(summary)])
    if cost_table(summary):
        lines += ["", "## Cost per answer (means over seeds)", ""] + md_table(cost_table(summary))
    lines += ["", "Fit per seed: " + ", ".join(f"{s}: {d}" for s, d in zip(seeds, summary["repeat"]["diagnoses"]))]
    return "\n".join(lines) + "\n"
