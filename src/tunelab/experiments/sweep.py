"""`tunelab sweep`: search config keys with Optuna (TPE by default), pruning trials whose validation
metric lags, in a study stored in a database so an interrupted sweep resumes and several workers share it.

The objective is the task's metric on a validation split carved from the training rows; the held-out set
is touched once, by the best config, at the end. Every trial is a normal run directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from tunelab.config import dump_config, validate_config
from tunelab.data import split_rows
from tunelab.errors import ConfigError, RunAborted
from tunelab.events import Event, Events, Listener
from tunelab.experiments import run_experiment
from tunelab.experiments.space import Dimension, load_space
from tunelab.experiments.variants import variant
from tunelab.rundir import RunDir, write_atomic, write_json
from tunelab.scoring.metrics import describe
from tunelab.train.budget import watched_metric
from tunelab.inputs import choose_task, training_rows

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Proposer = Callable[[optuna.Trial], dict[str, Any]]


@dataclass
class SweepOptions:
    space: Path | None  # None for a caller that proposes its own values (improve)
    trials: int = 8
    out_dir: Path | None = None
    storage: str | None = None          # any SQLAlchemy URL Optuna takes; default sqlite in out_dir
    study_name: str | None = None
    sampler: str = "tpe"                # tpe | random
    prune: bool = True
    metric: str | None = None           # default: the task's first metric a validation measures
    validation_fraction: float = 0.2
    heartbeat: int = 10                 # seconds; a trial silent for 2x this is failed and rerun
    score_default: bool = False         # also score the unchanged config on the held-out set
    create_only: bool = False           # create the study (tables, default trial) and return: before any worker
    time_budget: float | None = None    # seconds: no trial starts that would end past it (a typical trial's time)


def sweep(raw: dict[str, Any], opts: SweepOptions, on_event: Listener | None = None) -> dict[str, Any]:
    """Run (or join, or resume) the study until `opts.trials` trials finished; score the best once on held-out."""
    config = validate_config(raw)
    out = Path(opts.out_dir or config.output_dir or Path("runs") / f"{config.name}-sweep")
    dims = load_space(opts.space, raw)
    if opts.trials < 1:
        raise ConfigError(f"--trials: expected at least 1, got {opts.trials}")
    data_values, task = carve_validation(config, out, opts.validation_fraction)
    metric = choose_metric(config, task, opts.metric)
    extra = {**data_values, "train.best_metric": metric} if metric in task.validation_metrics(config) else data_values
    with file_lock(out / ".study.lock"):  # workers starting together: one creates the tables and queues the default
        study = open_study(out, opts, config, higher=describe(metric).higher_is_better)
        enqueue_default(study, dims, config)
    if opts.create_only:
        return {"study": study.study_name, "storage": safe_url(storage_url(opts, out)), "created": True}
    events = Events(on_event)
    run_trials(study, objective(raw, propose_all(dims), extra, metric, out, opts, events), opts, events)
    top = study.best_trial
    best = score_once(raw, {**chosen_values(top), **fixed_length(top)}, out / f"best-trial-{top.number:03d}", metric,
                      events, trial=top.number)
    default = None
    if opts.score_default:
        first = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("default")), None)
        # the default trial won (ties go to the earliest trial, the default): its held-out score is the best's
        default = best if first is not None and first.number == top.number else \
            score_once(raw, {**chosen_values(first), **fixed_length(first)} if first else {},
                       out / "default-config", metric, events)
    summary = sweep_summary(study, dims, metric, best, default, opts, out)
    write_sweep_files(out, study, summary, best["config_yaml"])
    return summary


def choose_metric(config: Any, task: Any, asked: str | None) -> str:
    allowed = sorted(set(task.validation_metrics(config)) | set(task.metric_names(config)))
    metric = asked or watched_metric(config, task)
    if metric not in allowed:
        raise ConfigError(f'--metric: task "{task.name}" does not measure "{metric}"; expected one of {"|".join(allowed)}')
    return metric


def carve_validation(config: Any, out: Path, fraction: float) -> tuple[dict[str, Any], Any]:
    """Split the training rows (after the held-out set is set aside, as a run does) into fit and validation
    files; trials train on one and are judged on the other, so no choice ever sees the held-out set."""
    train = training_rows(config)  # every training row, the held-out set set aside unread
    task = choose_task(config, train)  # for task=auto, the one the run would choose
    fit, validation = split_rows(train, fraction, config.train.seed, config.data.near_dup_threshold, "validation",
                                 "a sweep judges its trials on rows that are no copy of a training row")
    paths = {}
    for name, part in (("train", fit), ("validation", validation)):
        paths[name] = out / "data" / f"{name}.jsonl"
        write_atomic(paths[name], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part.rows))
    values = {"data.train": str(paths["train"].resolve()), "data.eval": str(paths["validation"].resolve()),
              "data.format": train.format, "data.columns": {}, "task": task.name}
    return values, task


def storage_url(opts: SweepOptions, out: Path) -> str:
    """The study's database: SQLite in the sweep directory by default; a PostgreSQL URL goes through psycopg 3
    (SQLAlchemy's plain `postgresql://` means psycopg2, which tunelab does not install)."""
    url = opts.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError("--storage postgresql://...: needs the psycopg driver: pip install 'tunelab[postgres]'")
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def safe_url(url: str) -> str:
    """A storage URL fit to print or record: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def is_server(url: str) -> bool:
    return not url.startswith("sqlite")


def open_study(out: Path, opts: SweepOptions, config: Any, higher: bool) -> optuna.Study:
    """The study, created here for SQLite (workers on one machine take turns under a file lock); on a database
    server it must exist already (`--create-study`, run once before the workers): workers on several machines
    creating tables and the study at the same moment race in the database itself."""
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    url = storage_url(opts, out)
    name = opts.study_name or f"{config.name}-sweep"
    try:
        storage = RDBStorage(url, heartbeat_interval=opts.heartbeat, grace_period=2 * opts.heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    except Exception as err:  # a wrong host, password or database: the driver's own words, without a traceback
        raise ConfigError(f"--storage {safe_url(url)}: {str(err).splitlines()[0]}") from None
    if is_server(url) and not opts.create_only and name not in {s.study_name for s in storage.get_all_studies()}:
        raise ConfigError(f'--storage {safe_url(url)}: no study "{name}" yet; create it once, before starting the '
                          "workers, with the same command and --create-study")
    seed = config.train.seed + os.getpid()  # workers sharing a study must not propose the same points
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[opts.sampler]()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if opts.prune else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, study_name=name,
                               direction="maximize" if higher else "minimize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)


def config_value(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def enqueue_default(study: optuna.Study, dims: list[Dimension], config: Any) -> None:
    """The unchanged config is the first trial wherever its values lie inside the space: the sweep then
    starts from the default and can only report something at least as good on validation."""
    if study.get_trials(deepcopy=False):
        return
    params = {d.param: json.dumps(v) if isinstance(v, (list, dict)) else v
              for d in dims if (v := config_value(config, d.key)) is not None and d.contains(v)}
    if params:
        study.enqueue_trial(params, user_attrs={"default": True}, skip_if_exists=True)


def propose_all(dims: list[Dimension]) -> Proposer:
    """Every dimension of the space, each trial."""
    return lambda trial: {d.key: d.suggest(trial) for d in dims}


def chosen_values(trial: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    """The config settings a trial ran with ({dotted key: value}), as its objective recorded them (a study
    from before they were recorded named its parameters by their keys)."""
    if trial is None:
        return {}
    return dict(trial.user_attrs["values"]) if "values" in trial.user_attrs else dict(trial.params)


def objective(raw: dict[str, Any], propose: Proposer, extra: dict[str, Any], metric: str, out: Path,
              opts: SweepOptions, events: Events):
    """One trial: the settings `propose` picks, trained on the fit rows and scored on the validation rows."""
    def run_trial(trial: optuna.Trial) -> float:
        values = propose(trial)
        run_dir = out / f"trial-{trial.number:03d}"
        trial.set_user_attr("values", values)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        events.emit("trial_started", trial=trial.number, of=opts.trials, params=values)
        config = variant(raw, {**extra, **values, "output_dir": str(run_dir)})  # a chosen data.train wins
        result = run_experiment(config, on_event=pruning_listener(trial, metric, opts.prune, events))
        value = result.summary["after"].get(metric)
        if value is None:
            raise ConfigError(f'trial {trial.number}: the run measured no "{metric}" on the validation split')
        trial.set_user_attr("steps", steps_chosen(result.summary))
        events.emit("trial_finished", trial=trial.number, value=float(value), metric=metric)
        return float(value)

    return run_trial


def steps_chosen(summary: dict[str, Any]) -> int:
    """The steps a trial's run settled on: its best validation's step under early stopping, else all it ran."""
    stopping = summary.get("early_stopping") or {}
    return int(stopping.get("best_step") or summary["train"]["steps"])


def fixed_length(trial: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    """Train the held-out run for the steps the trial chose on validation, with early stopping off: the length
    is part of what the trial chose, and the scoring run then trains on every fit row."""
    if trial is None or "steps" not in trial.user_attrs:
        return {}
    return {"train.max_steps": trial.user_attrs["steps"], "train.early_stopping_patience": 0}


def pruning_listener(trial: optuna.Trial, metric: str, prune: bool, events: Events) -> Listener:
    """Forward the run's events; report each validation of `metric` to the study and stop the run when
    the pruner says this trial is behind."""
    def listen(event: Event) -> None:
        events.tell(event)
        measured = event.fields.get("metrics") or {}
        if event.kind != "validation" or metric not in measured:
            return
        step, value = event.fields["step"], float(measured[metric])
        trial.report(value, step)
        if prune and trial.should_prune():
            events.emit("trial_pruned", trial=trial.number, step=step, value=value)
            raise optuna.TrialPruned(f"{metric} {value:.4g} at step {step} is behind earlier trials")

    return listen


def run_trials(study: optuna.Study, run_trial: Any, opts: SweepOptions, events: Events) -> None:
    """Run trials until `opts.trials` of them finished (completed or pruned), counting every worker's.
    While the remaining ones are running elsewhere, wait: a worker that died stops its heartbeat, its
    trial is failed and re-queued with the same parameters, and this worker picks it up. Under a time budget,
    no trial starts that would end past it."""
    started = time.monotonic()
    while True:
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished, running = sum(s in FINISHED for s in states), states.count(TrialState.RUNNING)
        if finished >= opts.trials or out_of_time(study, opts, started):
            return
        if states.count(TrialState.FAIL) > 2 * opts.trials:
            raise RunAborted(f"the sweep stopped: {states.count(TrialState.FAIL)} trials failed; see their run "
                             "directories")
        if finished + running >= opts.trials:
            events.emit("waiting", message=f"{running} trial(s) still running elsewhere; waiting")
            time.sleep(min(opts.heartbeat, 5))
            continue
        study.optimize(run_trial, n_trials=1, catch=(RunAborted,))


def out_of_time(study: optuna.Study, opts: SweepOptions, started: float) -> bool:
    """Under a time budget (counted from `started`, this worker's start), whether one more trial of the typical
    length (the longest finished one) would end past it. The first trial always runs."""
    if opts.time_budget is None:
        return False
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
             if t.datetime_complete is not None and t.datetime_start is not None]
    if not spans:
        return False  # until one trial finished there is neither a length to expect nor a best to report
    return time.monotonic() - started + max(spans) > opts.time_budget


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def score_once(raw: dict[str, Any], values: dict[str, Any], run_dir: Path, metric: str, events: Events,
               trial: int | None = None) -> dict[str, Any]:
    """Train `raw` with `values` on the full training rows and score it on the held-out set, once: a worker
    finding the score already there (or being made by another) reuses it."""
    with file_lock(run_dir.parent / ".held-out.lock"):
        summary = RunDir(run_dir).read_summary()
        if summary is None:
            events.emit("scoring_held_out", run_dir=str(run_dir), trial=trial)
            summary = run_experiment(variant(raw, {**values, "output_dir": str(run_dir)}),
                                     on_event=events.tell).summary
    return {"trial": trial, "params": values, "run_dir": str(run_dir), "metric": metric,
            "held_out": summary["after"].get(metric), "after": summary["after"],
            "config_yaml": reusable_yaml(variant(raw, values))}


def reusable_yaml(config: Any) -> str:
    """A config as best.yaml holds it: no output_dir, and absolute data paths (best.yaml lives elsewhere)."""
    config.output_dir = None
    config.data.train = config.data.train.resolve()
    config.data.eval = config.data.eval.resolve() if config.data.eval else None
    return dump_config(config)


def sweep_summary(study: optuna.Study, dims: list[Dimension], metric: str, best: dict[str, Any],
                  default: dict[str, Any] | None, opts: SweepOptions, out: Path) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    default_trial = next((t for t in trials if t.user_attrs.get("default") and t.state == TrialState.COMPLETE), None)
    return {"study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
            "space": {d.key: d.describe() for d in dims}, "trials_wanted": opts.trials,
            "states": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
            "best": {"trial": study.best_trial.number, "params": study.best_trial.params,
                     "validation": study.best_trial.value, "held_out": best["held_out"], "run_dir": best["run_dir"]},
            "default": {"validation": default_trial.value if default_trial else None,
                        "held_out": default["held_out"] if default else None,
                        "run_dir": default["run_dir"] if default else None},
            "out_dir": str(out)}


def write_sweep_files(out: Path, study: optuna.Study, summary: dict[str, Any], best_yaml: str) -> None:
    from tunelab.experiments.sweep_report import write_sweep_report

    write_atomic(out / "best.yaml", best_yaml)
    write_json(out / "sweep.json", summary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_sweep_report(out, study, summary)
