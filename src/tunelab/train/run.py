"""One run, top to bottom: config -> data -> model + method -> task trainer -> eval -> run directory.

`run(config)` is the single function a CLI, a job worker or a test calls; progress goes out as events.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.data import Dataset, load_dataset, split_rows
from tunelab.errors import DataError
from tunelab.eval import evidence
from tunelab.eval.evaluate import HeldOut, Scores, fit_metrics, metric_names, score
from tunelab.eval.forgetting import replay_examples
from tunelab.methods import count_params, get_method
from tunelab.models import resolve_model
from tunelab.models.safety import check_weights, loading_kwargs, plain_tensors_only
from tunelab.tasks import TASKS, Task, get_task, task_for_format
from tunelab.tasks.base import Encoded, GenerationCase
from tunelab.train.events import Events, Listener
from tunelab.eval.report import write_report
from tunelab.train.guards import train_guarded
from tunelab.train.resume import find_run_dir, prepare_resume
from tunelab.train.rundir import MetricsLog, write_json, write_run_header
from tunelab.train.trainer import Progress, build_trainer


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def run(config: RunConfig, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """resume=True (`--resume`) requires an unfinished run to continue; an unfinished output_dir always resumes."""
    if config.train.seeds:
        from tunelab.eval.repeat import run_repeated

        return run_repeated(config, on_event)
    events = Events(on_event)
    train_data, eval_data = load_data(config)
    task = get_task(config.task)
    model_path = resolve_model(config.model)
    run_dir = find_run_dir(config, resume)
    data_info = {"train": train_data.describe(), "eval": eval_data.describe(),
                 "eval_is_split_of_train": config.data.eval is None}
    resume_from = prepare_resume(run_dir, config, data_info, resume, events)
    write_run_header(run_dir, config, data_info)
    events.emit("run_started", run_dir=str(run_dir), model=str(model_path), train_rows=len(train_data.rows),
                eval_rows=len(eval_data.rows))

    torch.manual_seed(config.train.seed)
    tokenizer, model = load_model(model_path, config)
    train = encode(task, train_data, tokenizer, config.train.max_length, events)
    train += replay_examples(config.data.replay_fraction, len(train), tokenizer, config.train.max_length,
                             config.train.seed)
    held_out = held_out_set(task, eval_data, tokenizer, config, events)

    events.emit("evaluating", which="before")
    before = score(model, tokenizer, held_out, config.eval)
    baselines = evidence.before_training(model, tokenizer, task, train_data.rows, eval_data, held_out,
                                         train_sample(task, train_data, tokenizer, config, held_out.metrics), config,
                                         events)
    model = get_method(config.method).apply(model, config)
    trainable, total = count_params(model)
    events.emit("model_ready", trainable_params=trainable, total_params=total)

    metrics = MetricsLog(run_dir / "metrics.jsonl")
    best = evidence.early_stopping(config, tokenizer, held_out)
    progress = Progress(events, metrics, held_out.encoded, held_out.pad_id, config.train.eval_steps,
                        config.eval.batch_size, best=best)
    started = time.monotonic()
    trainer, output = train_guarded(
        lambda cfg: build_trainer(model, cfg, train, held_out.pad_id, run_dir / "checkpoints", progress),
        config, run_dir, resume_from, events)
    seconds = time.monotonic() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    if best is not None:
        best.restore(model)

    events.emit("evaluating", which="after")
    after = score(model, tokenizer, held_out, config.eval)
    found = evidence.after_training(model, tokenizer, baselines, before, after, config, run_dir, best,
                                    trainer.state.global_step, events)
    get_method(config.method).save(model, run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")

    summary = {
        "before": before.metrics, "after": after.metrics,
        "train": {"seconds": round(seconds, 2), "tokens": tokens,
                  "tokens_per_second": round((tokens - progress.tokens_at_start) / seconds, 2),  # this process's
                  "steps": trainer.state.global_step, "final_train_loss": output.training_loss},
        "trainable_params": trainable, "total_params": total,
        "model": config.model, "method": config.method, "task": config.task,
        "metrics": held_out.metrics, **found,
    }
    write_json(run_dir / "summary.json", summary)
    write_samples(run_dir, before, after, baselines.few_shot)
    write_report(run_dir, summary, config.eval.report_examples)
    events.emit("run_finished", run_dir=str(run_dir), summary=summary)
    return RunResult(run_dir, summary)


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
        config.task = name
    task = get_task(config.task)
    if dataset.format not in task.formats:
        raise DataError(f'{dataset.path}: rows are "{dataset.format}" but task "{task.name}" expects '
                        f'{" or ".join(task.formats)}; set task= to match the data')
    return task


def load_model(path: Path, config: RunConfig) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote = config.trust_remote_code
    check_weights(path, config.allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with plain_tensors_only(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=remote,
                                                     **loading_kwargs(config.allow_pickle))
    return tokenizer, model.to("cuda" if torch.cuda.is_available() else "cpu")


def encode(task: Task, dataset: Dataset, tokenizer: Any, max_length: int, events: Events) -> list[Encoded]:
    """Encode every row; rows left with nothing to learn after truncation are reported, then skipped."""
    encoded, empty, cut = [], [], 0
    for row, line in zip(dataset.rows, dataset.lines):
        example = task.encode(row, dataset.format, tokenizer, max_length)
        cut += example.truncated
        if example.supervised == 0:
            empty.append(line)
            continue
        encoded.append(example)
    if cut:
        events.emit("warning", message=f"{dataset.path}: {cut} row(s) longer than train.max_length={max_length} "
                                       "tokens were cut from the end")
    if empty:
        events.emit("warning", message=f"{dataset.path}: skipped {len(empty)} row(s) with no supervised token "
                                       f"within train.max_length={max_length} (lines {_lines(empty)})")
    if not encoded:
        raise DataError(f"{dataset.path}: no row has a supervised token within train.max_length={max_length}")
    return encoded


def _lines(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")


def held_out_set(task: Task, dataset: Dataset, tokenizer: Any, config: RunConfig, events: Events,
                 metrics: list[str] | None = None) -> HeldOut:
    """Encoded rows for the loss, generation cases for the metrics (`metrics` None: fitted to the references)."""
    encoded = encode(task, dataset, tokenizer, config.train.max_length, events)
    cases = generation_cases(task, dataset, tokenizer, config.eval.max_examples) if task.generative else []
    if metrics is None:
        metrics, messages = fit_metrics(metric_names(config, task), [c.reference for c in cases],
                                        explicit=config.eval.metrics is not None)
        for message in messages:
            events.emit("warning", message=f"{dataset.path}: {message}")
    return HeldOut(encoded, cases, tokenizer.pad_token_id, metrics)


def generation_cases(task: Task, dataset: Dataset, tokenizer: Any, max_examples: int) -> list[GenerationCase]:
    """A case for each of the first max_examples rows (0: all) that has one, tagged with the row's line."""
    cases = []
    for row, line in list(zip(dataset.rows, dataset.lines))[: max_examples or None]:
        case = task.generation_case(row, dataset.format, tokenizer)
        if case is not None:
            case.line = line
            cases.append(case)
    return cases


def train_sample(task: Task, dataset: Dataset, tokenizer: Any, config: RunConfig,
                 metrics: list[str]) -> HeldOut | None:
    """A seeded sample of training rows, scored with the held-out metrics to compare fit on seen vs unseen rows."""
    n = min(config.eval.train_sample, len(dataset.rows))
    if not n:
        return None
    picked = sorted(random.Random(config.train.seed).sample(range(len(dataset.rows)), n))
    subset = Dataset(dataset.path, dataset.format, [dataset.rows[i] for i in picked], [dataset.lines[i] for i in picked])
    return held_out_set(task, subset, tokenizer, config, Events(None), metrics)


def write_samples(run_dir: Path, before: Scores, after: Scores, few_shot: Scores | None = None) -> None:
    """One line per held-out case; the three answers are matched on the row's line, never on position."""
    import json

    tuned = {s["line"]: s["output"] for s in after.samples}
    shots = {s["line"]: s["output"] for s in few_shot.samples} if few_shot is not None else {}
    with open(run_dir / "samples.jsonl", "w", encoding="utf-8") as handle:
        for b in before.samples:
            handle.write(json.dumps({"line": b["line"], "prompt": b["prompt"], "reference": b["reference"],
                                     "before": b["output"], "few_shot": shots.get(b["line"]),
                                     "after": tuned[b["line"]]}) + "\n")
