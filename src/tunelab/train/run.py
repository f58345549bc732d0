"""One run, top to bottom: config -> data -> model (the task's kind, the method's load needs) -> method ->
the task's trainer -> evaluation -> run directory.

`run(config)` is the single function a CLI, a job worker or a test calls; progress goes out as events.
It names no task and no method: it asks the registries and calls their contracts in order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pydantic import ValidationError

from tunelab import distributed
from tunelab.config import RunConfig, dump_config, explain
from tunelab.data import Dataset, load_dataset, split_rows
from tunelab.data.formats import get_format
from tunelab.data.token_table import scratch
from tunelab.errors import ConfigError, DataError
from tunelab.eval import evidence
from tunelab.eval.report_html import write_report
from tunelab.events import Events, Listener
from tunelab.methods import count_params, get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.precision import autocast, resolve as resolve_precision
from tunelab.rundir import MetricsLog, directory_bytes, write_json, write_run_header, write_samples
from tunelab.scoring.metrics import describe
from tunelab.ranks import is_main_process, on_main
from tunelab.tasks import TASKS, Task, get_task, task_for_format
from tunelab.train.budget import resolve_epochs, stops_early
from tunelab.train.guards import train_guarded
from tunelab.train.resume import find_run_dir, prepare_resume, resume_layout
from tunelab.train.flops import throughput
from tunelab.train.trainer import Progress, common_args, liger_flag, precision_name, quiet


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def run(config: RunConfig, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """One run (train.seeds is `experiments`' business). resume=True (`--resume`) requires an unfinished run to
    continue; an unfinished output_dir always resumes."""
    if config.train.seeds:
        raise ConfigError("train.seeds asks for one run per seed: call tunelab.experiments.run_experiment")
    distributed.start(config)  # several processes: join the group; files and events come from the main one
    events = Events(on_event if is_main_process() else None)
    get_method(config.method).check_machine(config)
    liger_flag(config.train.liger)  # refused here, before any data or model loads, when this machine cannot
    resolve_precision(config.train.precision)  # likewise
    train_data, held_data = load_data(config)
    task, method = get_task(config.task), get_method(config.method)
    spec, model_path = task.model_spec(config, train_data), resolve_model(config.model)  # labels from every train row
    train_data, validation_data = validation_split(config, train_data)
    budget = resolve_epochs(config, task, len(train_data.rows),  # epochs=auto: numbers before config.yaml is written
                            len(validation_data.rows) if validation_data is not None else 0)
    run_dir, resume_from = on_main(
        lambda: open_run_dir(config, train_data, held_data, validation_data, resume, events))
    distributed.check_same_config(dump_config(config))

    torch.manual_seed(config.train.seed)
    tokenizer, model = load_pair(model_path, spec, LoadRules.of(config),
                                 **method.load_options(config, spec))
    method.check_model(model, spec)
    with scratch(run_dir):  # the training token ids go to a file every rank maps (data.token_table)
        prepared = task.prepare(config, tokenizer, train_data, held_data, events)
    validation_set = prepared.held_out if validation_data is None else \
        task.held_out(config, tokenizer, validation_data, None)
    best = evidence.early_stopping(config, task)

    events.emit("evaluating", which="before")
    with autocast(config.train.precision):  # every scoring pass in the precision the run trains in
        zero_shot = task.evaluate(model, tokenizer, prepared.held_out, config)
        before = evidence.before_training(model, tokenizer, task, train_data, held_data, prepared, config, events)
    model = method.apply(model, config, spec)
    trainable, total = count_params(model)
    events.emit("model_ready", trainable_params=trainable, total_params=total)

    trained = train(model, tokenizer, task, prepared, validation_set, config, run_dir, resume_from, best, events)
    if best is not None:
        best.restore(model)

    events.emit("evaluating", which="after")
    with autocast(config.train.precision):
        after = task.evaluate(model, tokenizer, prepared.held_out, config)
        found = evidence.after_training(model, tokenizer, task, prepared, before, zero_shot, after, config, run_dir,
                                        best, trained["steps"], events)
    if best is not None:
        found["early_stopping"]["validation_rows"] = len(validation_data.rows)
    spread = distributed.describe(config, model)
    artifact_bytes = 0
    if is_main_process():  # one process writes the run's files (tunelab.ranks)
        method.save(model, run_dir / "model")
        artifact_bytes = directory_bytes(run_dir / "model")  # what the method wrote, before the tokenizer joins it
        tokenizer.save_pretrained(run_dir / "model")

    summary = {"before": zero_shot.metrics, "after": after.metrics, "train": {**trained, "auto_budget": budget},
               "trainable_params": trainable, "total_params": total,
               "resources": {"artifact_bytes": artifact_bytes, **peak_memory()},
               "model": config.model, "method": config.method, "task": config.task, "distributed": spread,
               "method_info": method.info(model),
               "metrics": prepared.metrics, **prepared.info, **found}
    write_json(run_dir / "summary.json", summary)
    write_samples(run_dir, zero_shot.samples, after.samples, {k: b.scores.samples for k, b in before.baselines.items()})
    write_report(run_dir, summary, config.eval.report_examples)
    events.emit("run_finished", run_dir=str(run_dir), summary=summary)
    return RunResult(run_dir, summary)


def train(model: torch.nn.Module, tokenizer: Any, task: Task, prepared: Any, validation_set: Any, config: RunConfig,
          run_dir: Path, resume_from: Path | None, best: Any, events: Events) -> dict[str, Any]:
    """The task's trainer under every guard, validating on `validation_set`; returns the summary's `train` entry."""
    progress = Progress(events, MetricsLog(run_dir / "metrics.jsonl"),
                        evidence.validation(task, tokenizer, validation_set, config, best),
                        config.train.eval_steps, best=best, model=model)
    watched = config.train.best_metric if best is not None else "eval_loss"

    def build(cfg: RunConfig) -> Any:
        return quiet(task.trainer(model, tokenizer, prepared, common_args(cfg, run_dir / "checkpoints"), [progress]))

    config = resume_layout(config, resume_from, events)  # the same global batch on another world size
    started = time.monotonic()
    trainer, output = train_guarded(build, config, run_dir, resume_from, events, task.batch_multiple(config),
                                    (watched, describe(watched).higher_is_better))
    seconds = time.monotonic() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    args = trainer.args
    sequences = (trainer.state.global_step - progress.steps_at_start) * args.train_batch_size \
        * args.gradient_accumulation_steps * args.world_size
    return {"seconds": round(seconds, 2), "tokens": tokens, "precision": precision_name(args),
            "tokens_per_second": round((tokens - progress.tokens_at_start) / seconds, 2),  # this process's
            **throughput(model, tokens - progress.tokens_at_start, sequences, seconds, precision_name(args)),
            "steps": trainer.state.global_step, "final_train_loss": output.training_loss}


def peak_memory() -> dict[str, int]:
    """This process's peak resident memory so far (training and every evaluation), and on CUDA the peak
    GPU memory allocated."""
    import resource

    peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB
    if torch.cuda.is_available():
        peak["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


def open_run_dir(config: RunConfig, train_data: Dataset, held_data: Dataset, validation_data: Dataset | None,
                 resume: bool, events: Events) -> tuple[Path, Path | None]:
    """The run directory with its header written, and the checkpoint to resume from (if any)."""
    run_dir = find_run_dir(config, resume)
    data_info = {"train": train_data.describe(), "eval": held_data.describe(),
                 "eval_is_split_of_train": config.data.eval is None,
                 "validation_rows": len(validation_data.rows) if validation_data is not None else 0}
    resume_from = prepare_resume(run_dir, config, data_info, resume, events)
    write_run_header(run_dir, dump_config(config), data_info)
    distributed.write_engine_files(config, run_dir)
    events.emit("run_started", run_dir=str(run_dir), model=config.model, train_rows=len(train_data.rows),
                eval_rows=len(held_data.rows), validation_rows=data_info["validation_rows"])
    return run_dir, resume_from


def validation_split(config: RunConfig, train_data: Dataset) -> tuple[Dataset, Dataset | None]:
    """Under early stopping, a seeded share of the training rows to validate on (the held-out set only
    reports, so the number it gives was not chosen by it); else the rows unchanged and None."""
    if not stops_early(config):
        return train_data, None
    if len(train_data.rows) < 2:
        raise DataError(f"{train_data.path}: {len(train_data.rows)} training row(s) leave none to validate on for "
                        "early stopping; add rows, or set train.epochs (or train.max_steps) to train without it")
    return split_rows(train_data, config.data.validation_fraction, config.train.seed)


def load_data(config: RunConfig) -> tuple[Dataset, Dataset]:
    from tunelab.data.leakage import find_leaks, refuse_leaks

    data = config.data
    train = load_dataset(data.train, data.format, data.columns)
    choose_task(config, train)
    if data.eval is None:
        train, held = split_rows(train, data.eval_fraction, config.train.seed)
    else:
        held = load_dataset(data.eval, train.format, data.columns)
    if data.leakage_check:
        refuse_leaks(find_leaks(train, held, data.near_dup_threshold), data.leakage_threshold)
    return train, held


def choose_task(config: RunConfig, dataset: Dataset) -> Task:
    """The configured task, or for task=auto the one that trains on the data's format (written back)."""
    if config.task == "auto":
        name = task_for_format(dataset.format)
        if name is None:
            raise DataError(f'{dataset.path}: no task trains on "{dataset.format}" rows yet; '
                            f'tasks: {", ".join(sorted(TASKS))}')
        try:
            config.task = name  # re-validates: sections set for another task are refused here
        except ValidationError as err:
            raise DataError(f'{dataset.path}: task=auto chose "{name}" for these rows, but\n{explain(err, {})}') from None
    task = get_task(config.task)
    if dataset.format not in task.formats:
        shapes = " or ".join(f'{name} ({"+".join(get_format(name).required)})' for name in task.formats)
        raise DataError(f'{dataset.path}: rows are "{dataset.format}" but task "{task.name}" expects {shapes}, '
                        f'e.g. {json.dumps(get_format(task.formats[0]).example)}; set task= to match the data')
    return task
