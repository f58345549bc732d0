"""What a run is given, made complete before anything trains or any directory is written.

`load_data` reads the training and held-out rows (and, under early stopping, sets a validation share
of train aside); `resolve` turns the user's config into the complete one the run uses: the task for
task=auto, the budget for epochs=auto, what the task reads from the rows (a classifier's labels), what
it builds before training (a distillation student), each recorded as a setting, and every check that
can refuse the run before a model loads. Nothing writes into a config after `resolve`: config.yaml
holds what it returned, and the run uses exactly that. `open_run` reads a finished run back.

`run()`, `tunelab eval`, `tunelab export` and the experiments all take their inputs from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.config import RunConfig, dump_config, explain, validate_config
from tunelab.data import Dataset, load_dataset, split_rows
from tunelab.data.formats import get_format
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.methods import get_method
from tunelab.models import resolve_model
from tunelab.precision import resolve as resolve_precision
from tunelab.rundir import RunDir
from tunelab.tasks import TASKS, Task, get_task, task_for_format
from tunelab.train.budget import auto_length, resolve_epochs, stops_early


@dataclass
class RunData:
    """The rows a run reads: `train` to fit on, `held` to report on, `validation` (early stopping's share of
    train, or None) and `all_train`, every training row before that share was set aside."""

    train: Dataset
    held: Dataset
    validation: Dataset | None = None
    all_train: Dataset | None = None

    @classmethod
    def of(cls, dataset: Dataset) -> RunData:
        """One file as everything (a bare model scored on it by `tunelab eval`, a test)."""
        return cls(dataset, dataset, None, dataset)

    def validation_rows(self) -> int:
        return len(self.validation.rows) if self.validation is not None else 0

    def describe(self, config: RunConfig) -> dict[str, Any]:
        """data.json: each file's path, format, rows and sha256."""
        return {"train": self.train.describe(), "eval": self.held.describe(),
                "eval_is_split_of_train": config.data.eval is None, "validation_rows": self.validation_rows()}


def load_data(config: RunConfig, check_leakage: bool = True) -> RunData:
    """The run's rows; refused here when they do not fit the task, or held-out rows repeat train rows."""
    from tunelab.data.leakage import find_leaks, refuse_leaks

    data = config.data
    train = load_dataset(data.train, data.format, data.columns)
    choose_task(config, train)
    if data.eval is None:
        train, held = split_rows(train, data.eval_fraction, config.train.seed, data.near_dup_threshold)
    else:
        held = load_dataset(data.eval, train.format, data.columns)
    if data.leakage_check and check_leakage:
        refuse_leaks(find_leaks(train, held, data.near_dup_threshold), data.leakage_threshold)
    fit, validation = validation_split(config, train)
    return RunData(fit, held, validation, train)


def training_rows(config: RunConfig) -> Dataset:
    """Every training row a run would see (the held-out share set aside when it is a split of train), without
    reading data.eval: what a search carves its validation rows from."""
    train = load_dataset(config.data.train, config.data.format, config.data.columns)
    choose_task(config, train)
    return split_rows(train, config.data.eval_fraction, config.train.seed)[0] if config.data.eval is None else train


def validation_split(config: RunConfig, train: Dataset) -> tuple[Dataset, Dataset | None]:
    """Under early stopping, a seeded share of the training rows to validate on (the held-out set only
    reports, so the number it gives was not chosen by it); else the rows unchanged and None."""
    if not stops_early(config):
        return train, None
    if len(train.rows) < 2:
        raise DataError(f"{train.path}: {len(train.rows)} training row(s) leave none to validate on for "
                        "early stopping; set train.epochs (or train.max_steps) to train without it")
    return split_rows(train, config.data.validation_fraction, config.train.seed, config.data.near_dup_threshold,
                      "validation", "set train.epochs (or train.max_steps) to train without early stopping")


def choose_task(config: RunConfig, dataset: Dataset) -> Task:
    """The configured task, or for task=auto the one that trains on the data's format; refused when the
    rows do not fit it. Reads the config, never writes it."""
    name = config.task
    if name == "auto":
        name = task_for_format(dataset.format)
        if name is None:
            raise DataError(f'{dataset.path}: no task trains on "{dataset.format}" rows yet; '
                            f'tasks: {", ".join(sorted(TASKS))}')
    task = get_task(name)
    if dataset.format not in task.formats:
        shapes = " or ".join(f'{name} ({"+".join(get_format(name).required)})' for name in task.formats)
        raise DataError(f'{dataset.path}: rows are "{dataset.format}" but task "{task.name}" expects {shapes}, '
                        f'e.g. {json.dumps(get_format(task.formats[0]).example)}; set task= to match the data')
    return task


def resolve(config: RunConfig, data: RunData) -> RunConfig:
    """The complete config for these rows, as a new object (the caller's is left as it was): every setting
    the run decides is recorded, and everything that can be checked before a model loads is checked."""
    rows = data.all_train or data.train
    task = choose_task(config, rows)
    chosen = with_settings(config, {"task": task.name}, f'{rows.path}: task={config.task} chose "{task.name}" for '
                                                        "these rows, but")
    updates, _ = resolve_epochs(chosen, task, len(data.train.rows), data.validation_rows())
    updates.update(task.resolve(chosen, rows))
    complete = with_settings(chosen, updates, f"{rows.path}: the run chose "
                                              f"{', '.join(f'{k}={v}' for k, v in updates.items())} for these rows, but")
    check_before_loading(complete, task, (rows, data.held))
    # A round trip through config.yaml's text: the run uses exactly what its config.yaml says.
    return validate_config(yaml.safe_load(dump_config(complete)))


def auto_budget(config: RunConfig, complete: RunConfig, data: RunData) -> dict[str, Any] | None:
    """What epochs=auto chose (summary.json's `train.auto_budget`), or None when the user fixed the length."""
    if not auto_length(config):
        return None
    return resolve_epochs(config, get_task(complete.task), len(data.train.rows), data.validation_rows())[1]


def with_settings(config: RunConfig, updates: dict[str, Any], refused: str = "config:") -> RunConfig:
    """A validated copy of `config` with dotted-key settings applied (`train.epochs`, `model`, ...); a setting
    the config refuses is a DataError starting with `refused`."""
    copy = config.model_copy(deep=True)
    try:
        for key, value in updates.items():
            *sections, name = key.split(".")
            node = copy
            for section in sections:
                node = getattr(node, section)
            setattr(node, name, value)  # validated: the config models validate on assignment
    except ValidationError as err:
        raise DataError(f"{refused}\n{explain(err, {})}") from None
    return copy


def check_machine(config: RunConfig) -> None:
    """Refusals that need neither data nor model: what this machine cannot run (a CUDA-only method, Liger,
    fp16 without a GPU)."""
    from tunelab.train.trainer import liger_flag

    get_method(config.method).check_machine(config)
    liger_flag(config.train.liger)
    resolve_precision(config.train.precision)


def check_before_loading(config: RunConfig, task: Task, datasets: tuple[Dataset, ...]) -> None:
    """Refusals that need no model: the model's place, this machine's means, the watched metric, the task's
    own checks of its settings and of the rows."""
    from tunelab.eval.evidence import check_baselines, check_best_metric

    resolve_model(config.model)  # a bundled alias or an existing directory (building a bundled one once)
    check_machine(config)
    if config.train.early_stopping_patience:
        check_best_metric(config, task)
    check_baselines(config, task)
    task.check(config, datasets)
    for path in task.runs_read(config):
        open_run(path, what=f"task {task.name}")


@dataclass
class Run:
    """A run directory read back: its validated config and, once it finished, its summary."""

    run_dir: RunDir
    config: RunConfig
    summary: dict[str, Any] | None

    @property
    def task(self) -> Task:
        return get_task(self.config.task)

    @property
    def method(self) -> Any:
        return get_method(self.config.method)


def open_run(path: Path | str, finished: bool = True, what: str = "") -> Run:
    """A run directory's config (validated) and summary; with `finished`, refused unless the run succeeded
    and saved its model. `what` names who asks, for the error (e.g. "rlhf.reward_model")."""
    run_dir = RunDir(path)
    who = f"{what}: " if what else ""
    if not run_dir.has_config():
        raise TunelabError(f"{who}{run_dir}: not a run directory (no config); give a directory `tunelab run` wrote")
    if finished and not run_dir.finished():
        raise TunelabError(f"{who}{run_dir}: the run has not finished (it is {run_dir.state()}); finish it or resume "
                           "it with `tunelab run ... --resume` first")
    if finished and not run_dir.has_model():
        raise TunelabError(f"{who}{run_dir}: holds no tuned model (a train.seeds run keeps one in each seed-N "
                           "directory); give one of those")
    try:
        config = validate_config(run_dir.read_config())
    except ConfigError as err:
        raise ConfigError(f"{who}{run_dir}: its config no longer validates:\n{err}") from None
    return Run(run_dir, config, run_dir.read_summary())
