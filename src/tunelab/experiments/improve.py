"""`tunelab improve RUN_DIR`: act on a finished run's evidence. Its findings (over- or underfitting,
forgetting) name remedies (`remedies.REMEDIES`); improve runs them as one bounded Optuna study with the
sweep's machinery: each trial picks a remedy, then the remedy's keys, trains on rows carved from the run's
training rows and is judged on the rest of them (never on the held-out set). Trial 0 is the run's own config
on the same split, the reference every remedy must beat. A lead within the validation noise is checked
with more seeds. The winner is retrained on every training row and scored once on the held-out set; if no
remedy beats the original, improve says so and keeps the original config.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab.config import validate_config
from tunelab.errors import ConfigError, RunAborted, TunelabError
from tunelab.eval.report import worth_line
from tunelab.events import Events, Listener
from tunelab.experiments import run_experiment
from tunelab.experiments.improve_report import write_improve_files
from tunelab.experiments.remedies import FORGETTING, REMEDIES, TOO_LITTLE_DATA, Remedy, findings, remedies_for
from tunelab.experiments.space import Dimension
from tunelab.experiments.sweep import (FINISHED, Proposer, SweepOptions, carve_validation, choose_metric,
                                       chosen_values, file_lock, fixed_length, objective, open_study,
                                       reusable_yaml, run_trials, score_once)
from tunelab.experiments.variants import variant
from tunelab.inputs import open_run
from tunelab.rundir import RunDir
from tunelab.scoring import rows as row_values
from tunelab.scoring.metrics import describe

ORIGINAL = "original"  # trial 0's remedy: the run's own settings on the search's split
DEFAULT_BUDGET = 6


@dataclass
class ImproveOptions:
    budget: int | None = None            # remedy trials (besides trial 0); default DEFAULT_BUDGET
    time_budget: float | None = None     # seconds for the whole of improve, the held-out run included
    out_dir: Path | None = None          # default: RUN_DIR-improve beside the run
    validation_fraction: float = 0.2
    confirm_seeds: int = 2               # more seeds for the winner and the original when its lead is noise
    metric: str | None = None            # default: the task's metric a sweep watches


@dataclass
class Original:
    """The run improve starts from: its directory, settings as written, config, summary and findings."""

    run_dir: RunDir
    raw: dict[str, Any]
    config: Any
    summary: dict[str, Any]
    found: list[dict[str, str]]
    seconds: float | None


def improve(run_path: Path | str, opts: ImproveOptions, on_event: Listener | None = None) -> dict[str, Any]:
    """Search the remedies of the run's findings; retrain and score the winner once; write the improve directory."""
    original = read_original(Path(run_path))
    remedies = remedies_for([f["kind"] for f in original.found], original.raw, original.config)
    if not remedies:
        kinds = ", ".join(sorted({f["kind"] for f in original.found}))
        raise ConfigError(f"{original.run_dir}: no remedy applies to this run's findings ({kinds}) with method "
                          f"{original.config.method}; see docs/improve.md for what each finding tries")
    check_budget(opts, original)
    out = Path(opts.out_dir or original.run_dir.path.parent / f"{original.run_dir.path.name}-improve")
    events = Events(on_event)
    started = time.monotonic()
    sopts = SweepOptions(None, 1, out, study_name=f"{original.config.name}-improve",
                         validation_fraction=opts.validation_fraction, time_budget=search_seconds(opts, original))
    data_values, task = carve_validation(original.config, out, opts.validation_fraction)
    remedies, notes = with_synthetic_rows(original, remedies, out, data_values, events)
    if sopts.time_budget is not None:
        sopts.time_budget -= time.monotonic() - started  # writing synthetic rows took its share
    metric = choose_metric(original.config, task, opts.metric)
    extra = {**data_values, "train.best_metric": metric} if metric in task.validation_metrics(original.config) \
        else data_values
    with file_lock(out / ".study.lock"):
        study = open_study(out, sopts, original.config, higher=describe(metric).higher_is_better)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial({}, user_attrs={"default": True})
            for remedy, _ in remedies:  # each remedy once, in the table's order, before the sampler chooses
                study.enqueue_trial({"remedy": remedy.name})
    sopts.trials = wanted_trials(study, opts, out, events)
    run_trials(study, objective(original.raw, propose(remedies), extra, metric, out, sopts, events), sopts, events)
    choice = choose(study, original, extra, metric, out, opts, events, started)
    held = held_out(original, choice, metric, out, events)
    summary = improve_summary(original, remedies, study, choice, held, metric, out, time.monotonic() - started)
    summary["notes"] = notes
    write_improve_files(out, study, summary, held.get("config_yaml") or reusable_yaml(validate_config(original.raw)))
    return summary


def read_original(path: Path) -> Original:
    """The finished run and its findings; refused when it has none to act on."""
    if not RunDir(path).has_config():
        raise TunelabError(f"{path}: not a run directory (no config.yaml); give a directory `tunelab run` wrote")
    run = open_run(path, what="improve")
    summary = run.summary or {}
    if not summary.get("diagnosis"):
        raise TunelabError(f"{path}: the run's summary.json holds no diagnosis to act on (a run from an older "
                           "tunelab, or a train.seeds parent: give one of its seed-N directories)")
    data = run.run_dir.read_data_info().get("train") or {}
    found = findings(summary, data.get("rows"))
    if not found:
        raise TunelabError(f"{path}: nothing to improve: the run was diagnosed \"{summary['diagnosis']['verdict']}\" "
                           "with no forgetting, and improve acts on overfitting, underfitting and forgetting")
    raw = run.run_dir.read_config()
    raw.pop("output_dir", None)
    status = run.run_dir.read_status() or {}
    seconds = status["finished_at"] - status["started_at"] if status.get("finished_at") and \
        status.get("started_at") else None
    return Original(run.run_dir, raw, validate_config(raw), summary, found, seconds)


def with_synthetic_rows(original: Original, remedies: list[tuple[Remedy, list[Dimension]]], out: Path,
                        data_values: dict[str, Any], events: Events) -> tuple[list[Any], list[str]]:
    """For too little data: the synthetic rows written (once) and their remedy added; else why not, as a note."""
    from tunelab.experiments.improve_data import SYNTHETIC, synthetic_train, why_not_synthetic

    kinds = [f["kind"] for f in original.found]
    if TOO_LITTLE_DATA not in kinds:
        return remedies, []
    why_not = why_not_synthetic(original.config, data_values["data.format"])
    if why_not:
        return remedies, [f"synthetic rows (too little data) were not tried: {why_not}"]
    path = synthetic_train(original.config, out, Path(data_values["data.train"]), Path(data_values["data.eval"]),
                           events)
    return remedies_for(kinds, original.raw, original.config, {SYNTHETIC: str(path.resolve())}), []


def check_budget(opts: ImproveOptions, original: Original) -> None:
    """Refuse a budget that cannot hold one remedy trial: the reference trial, one remedy and the held-out run."""
    if not 0 < opts.validation_fraction < 1:
        raise ConfigError(f"--validation-fraction: expected a share between 0 and 1, got {opts.validation_fraction:g}")
    if opts.budget is not None and opts.budget < 1:
        raise ConfigError(f"--budget: expected at least 1 remedy trial, got {opts.budget}")
    if opts.time_budget is not None:
        need = 3 * (original.seconds or 0)
        if opts.time_budget <= 0 or opts.time_budget < need:
            raise ConfigError(f"--time-budget {opts.time_budget:g}: too small for one trial: the original run took "
                              f"{original.seconds or 0:.0f} s, and improve needs about three such runs (the original "
                              f"on the validation split, one remedy, the held-out run): give at least {need:.0f}")


def search_seconds(opts: ImproveOptions, original: Original) -> float | None:
    """The search's share of the time budget: all of it less one run's time, kept for the held-out run."""
    if opts.time_budget is None:
        return None
    return opts.time_budget - (original.seconds or 0)


def wanted_trials(study: optuna.Study, opts: ImproveOptions, out: Path, events: Events) -> int:
    """Finished trials the search runs to: trial 0 and the budget's remedy trials; a finished improve asked
    again continues its study with the budget's trials more."""
    budget = opts.budget if opts.budget is not None else (math.inf if opts.time_budget else DEFAULT_BUDGET)
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if (out / "improve.json").is_file():
        events.emit("improve_resumed", message=f"{out} holds a finished improve study ({done} trials); continuing it "
                                       f"with {'a time budget' if opts.budget is None and opts.time_budget else budget} "
                                       "more")
        return done + budget
    if done:
        events.emit("improve_resumed", message=f"{out}: continuing an unfinished improve study ({done} trials finished)")
    return 1 + budget


def propose(remedies: list[tuple[Remedy, list[Dimension]]]) -> Proposer:
    """A trial's settings: a remedy (trial 0: the original), then each of that remedy's keys."""
    by_name = {remedy.name: dims for remedy, dims in remedies}

    def pick(trial: optuna.Trial) -> dict[str, Any]:
        name = ORIGINAL if trial.user_attrs.get("default") else trial.suggest_categorical("remedy", list(by_name))
        trial.set_user_attr("remedy", name)
        return {d.key: d.suggest(trial) for d in by_name.get(name, [])}

    return pick


@dataclass
class Choice:
    """The search's outcome: the winning trial (None: the original stays), the reference trial, and how sure."""

    best: optuna.trial.FrozenTrial | None
    reference: optuna.trial.FrozenTrial
    validation: dict[str, Any] | None  # the winner against the reference on the validation rows, with interval
    seeds: dict[str, Any] | None       # means over seeds when the lead was within noise
    note: str


def choose(study: optuna.Study, original: Original, extra: dict[str, Any], metric: str, out: Path,
           opts: ImproveOptions, events: Events, started: float) -> Choice:
    """The trial that beat the original on validation, beyond noise or over seeds; else None (keep the original)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    reference = next((t for t in trials if t.user_attrs.get("default")), None)
    if reference is None:
        raise RunAborted(f"{out}: trial 0 (the original settings on the validation rows) did not finish, so no "
                         "remedy can be judged against it; see trial-000/ and ask again to continue the study")
    if any(f["kind"] == FORGETTING for f in original.found):
        trials = [t for t in trials if t is reference or not forgot(t)]  # a remedy for forgetting must not forget
        spared = spared_forgetting(trials, reference, metric)
        if spared is not None:
            return spared
    better = (lambda a, b: a > b) if describe(metric).higher_is_better else (lambda a, b: a < b)
    top = min(trials, key=lambda t: (-t.value if describe(metric).higher_is_better else t.value, t.number))
    if top.number == reference.number or not better(top.value, reference.value):
        return Choice(None, reference, None, None, "no remedy beat the original on validation; the original is kept")
    versus = compare_runs(metric, reference.user_attrs["run_dir"], top.user_attrs["run_dir"])
    if versus is not None and versus["clear"]:
        return Choice(top, reference, versus, None, "the winner beat the original on validation beyond noise")
    if opts.confirm_seeds < 1 or not time_left(opts, original, started, 2 * opts.confirm_seeds, study):
        return Choice(top, reference, versus, None, "the winner's lead on validation is within noise and was not "
                                                    "checked with more seeds (no time left in the budget)")
    seeds = confirm(original, top, reference, extra, metric, out, opts, events)
    if better(seeds["winner"], seeds["original"]):
        return Choice(top, reference, versus, seeds, f"the winner's lead on validation was within noise; over "
                                                      f"{seeds['seeds']} seeds it still leads")
    return Choice(None, reference, versus, seeds, f"the winner's lead on validation was within noise and over "
                                                  f"{seeds['seeds']} seeds it did not hold; the original is kept")


def forgot(trial: Any) -> bool:
    """Whether the trial's run flagged forgetting on its probe (a run without the probe did not)."""
    summary = RunDir(trial.user_attrs["run_dir"]).read_summary() or {}
    return bool((summary.get("forgetting") or {}).get("flagged"))


def spared_forgetting(trials: list[Any], reference: Any, metric: str) -> Choice | None:
    """When the original forgets on its validation run too: the best trial that does not forget wins, if its
    metric is not clearly worse than the original's on validation (None: decide on the metric alone)."""
    calm = [t for t in trials if t is not reference]
    if not forgot(reference) or not calm:
        return None
    top = max(calm, key=lambda t: t.value if describe(metric).higher_is_better else -t.value)
    versus = compare_runs(metric, reference.user_attrs["run_dir"], top.user_attrs["run_dir"])
    if versus is None or versus["direction"] == "worse":
        return None
    return Choice(top, reference, versus, None, "the original forgets on the probe and the winner does not, with "
                                                "no clear loss in the metric on validation")


def time_left(opts: ImproveOptions, original: Original, started: float, runs: int, study: optuna.Study) -> bool:
    """Whether `runs` more validation runs and the held-out run fit in the time budget (always, without one)."""
    if opts.time_budget is None:
        return True
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
             if t.datetime_complete is not None and t.datetime_start is not None]
    need = runs * max(spans, default=0.0) + (original.seconds or 0)
    return time.monotonic() - started + need <= opts.time_budget


def confirm(original: Original, top: Any, reference: Any, extra: dict[str, Any], metric: str, out: Path,
            opts: ImproveOptions, events: Events) -> dict[str, Any]:
    """The winner and the original again with `confirm_seeds` more seeds each, on the same split: the mean
    validation over every seed (the trial's own included) of each."""
    seed = original.config.train.seed
    more = [seed + k for k in range(1, opts.confirm_seeds + 1)]
    means = {}
    for who, trial in (("winner", top), ("original", reference)):
        run_dir = out / f"seeds-trial-{trial.number:03d}"
        events.emit("improve_confirming", message=f"the lead is within noise: {who} (trial {trial.number}) with seeds {more}")
        config = variant(original.raw, {**extra, **chosen_values(trial), "output_dir": str(run_dir),
                                        "train.seeds": more if len(more) > 1 else None,
                                        "train.seed": more[0]})
        summary = RunDir(run_dir).read_summary() if RunDir(run_dir).finished() else \
            run_experiment(config, on_event=events.tell).summary
        means[who] = (trial.value + len(more) * float(summary["after"][metric])) / (1 + len(more))
    return {**means, "seeds": 1 + len(more), "metric": metric}


def compare_runs(metric: str, first: str | Path, second: str | Path) -> dict[str, Any] | None:
    """The second run's `metric` against the first's on the rows both scored, with its 95% interval (None when
    either run kept no rows: a run from before after.json)."""
    from tunelab.eval.intervals import compare, direction

    a, b = (RunDir(p).read_after() for p in (first, second))
    if a is None or b is None:
        return None
    rows_a, rows_b = row_values.decode(a)["rows"], row_values.decode(b)["rows"]
    if metric not in rows_a or metric not in rows_b:
        return None
    found = compare(metric, rows_a[metric], rows_b[metric])
    return {**found, "direction": direction(metric, found)} if found else None


def held_out(original: Original, choice: Choice, metric: str, out: Path, events: Events) -> dict[str, Any]:
    """The winner retrained on every training row for the steps it chose and scored once on the held-out set,
    each compared metric against the original run's with its interval; {} when the original is kept."""
    if choice.best is None:
        return {}
    top = choice.best
    values = chosen_values(top)
    if "data.train" in values:  # synthetic rows: the held-out run trains on every training row and on them
        from tunelab.experiments.improve_data import held_out_train

        values.update(held_out_train(original.config, out))
    best = score_once(original.raw, {**values, **fixed_length(top)}, out / f"best-trial-{top.number:03d}",
                      metric, events, trial=top.number)
    improved = RunDir(best["run_dir"]).read_summary() or {}
    names = [m for m in best["after"] if describe(m).compared and m in original.summary.get("after", {})]
    versus = {m: compare_runs(m, original.run_dir.path, best["run_dir"]) for m in names}
    return {**best, "versus": versus, "forgetting": (improved.get("forgetting") or {}).get("perplexity_change"),
            "seconds": (improved.get("train") or {}).get("seconds"), "summary": improved}


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_complete is None or trial.datetime_start is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def remedy_rows(study: optuna.Study, remedies: list[tuple[Remedy, list[Dimension]]], reference: Any,
                metric: str) -> list[dict[str, Any]]:
    """Per remedy: its findings, keys and ranges, why, trials, best validation against the original's, time."""
    trials = study.get_trials(deepcopy=False)
    higher = describe(metric).higher_is_better
    out = []
    for remedy, dims in remedies:
        mine = [t for t in trials if t.user_attrs.get("remedy") == remedy.name and t.state in FINISHED]
        done = [t for t in mine if t.state == TrialState.COMPLETE]
        top = max(done, key=lambda t: t.value if higher else -t.value) if done else None
        out.append({"remedy": remedy.name, "why": remedy.why,
                    "findings": [k for k, rs in REMEDIES.items() if remedy in rs],
                    "keys": {d.key: d.describe() for d in dims}, "trials": len(mine),
                    "pruned": sum(t.state == TrialState.PRUNED for t in mine),
                    "best_trial": top.number if top else None, "best_values": chosen_values(top) if top else None,
                    "validation": top.value if top else None, "original_validation": reference.value,
                    "versus_original": compare_runs(metric, reference.user_attrs["run_dir"], top.user_attrs["run_dir"])
                    if top else None, "seconds": round(sum(trial_seconds(t) for t in mine), 1)})
    return out


def improve_summary(original: Original, remedies: list[tuple[Remedy, list[Dimension]]], study: optuna.Study,
                    choice: Choice, held: dict[str, Any], metric: str, out: Path, seconds: float) -> dict[str, Any]:
    before = original.summary.get("after", {}).get(metric)
    forgetting = (original.summary.get("forgetting") or {}).get("perplexity_change")
    kept = choice.best is None
    return {"original_run": str(original.run_dir), "findings": original.found, "metric": metric,
            "direction": study.direction.name.lower(), "study": study.study_name,
            "trials": sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)) - 1,
            "remedies": remedy_rows(study, remedies, choice.reference, metric),
            "decision": {"kept_original": kept, "note": choice.note,
                         "trial": None if kept else choice.best.number,
                         "remedy": None if kept else choice.best.user_attrs.get("remedy"),
                         "values": None if kept else chosen_values(choice.best),
                         "validation": None if kept else choice.best.value,
                         "original_validation": choice.reference.value,
                         "validation_versus_original": choice.validation, "seeds": choice.seeds},
            "held_out": {"original": before, "improved": held.get("held_out"), "versus": held.get("versus") or {},
                         "original_forgetting": forgetting, "improved_forgetting": held.get("forgetting"),
                         # the best prompting baseline against each tune, with the cost per answer (eval/worth.py)
                         "original_prompting": worth_line(original.summary),
                         "improved_prompting": worth_line(held["summary"]) if held.get("summary") else None},
            "improved_run": held.get("run_dir") or str(original.run_dir),
            "seconds": round(seconds, 1), "out_dir": str(out)}
