"""One run, top to bottom: config -> data -> the complete config (`inputs.resolve`) -> the run directory ->
model (the task's kind, the method's load needs) -> method -> the task's trainer -> evaluation -> summary.

`run(config)` is the single function a CLI, a job worker or a test calls; progress goes out as events
(and into the run directory's events.jsonl), and status.json says at every moment whether the run is
created, running, succeeded, failed or interrupted. It names no task and no method: it asks the
registries and calls their contracts in order.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab import distributed
from tunelab.config import RunConfig, dump_config
from tunelab.data.token_table import scratch
from tunelab.errors import ConfigError, RunInterrupted, TunelabError
from tunelab.eval import evidence
from tunelab.eval.report import headline_metric
from tunelab.eval.report_html import write_report
from tunelab.eval.worth import weigh
from tunelab.events import Events, Listener
from tunelab.inputs import RunData, auto_budget, check_machine, load_data, resolve
from tunelab.methods import count_params, get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.precision import autocast
from tunelab.rundir import FAILED, INTERRUPTED, RUNNING, SUCCEEDED, RunDir, Status, directory_bytes
from tunelab.scoring import rows
from tunelab.scoring.metrics import describe
from tunelab.ranks import group_ready, is_main_process, on_main
from tunelab.tasks import Task, get_task
from tunelab.train.checkpoint import checkpoint_dirs, keep_weights_only, read_manifest
from tunelab.train.flops import throughput
from tunelab.train.guards import train_guarded
from tunelab.train.resume import find_run_dir, prepare_resume, refuse_foreign, resume_layout, unfinished_like
from tunelab.train.trainer import Progress, common_args, library_bars_off, precision_name, quiet


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class Opened:
    """The run directory this process holds: its status writer, its lock, and the checkpoint to continue from."""

    run_dir: RunDir
    status: Status
    lock: Any
    resume_from: Path | None
    data_info: dict[str, Any]


def run(config: RunConfig, on_event: Listener | None = None, resume: bool = False) -> RunResult:
    """One run (train.seeds is `experiments`' business). resume=True (`--resume`) requires an unfinished run to
    continue; an unfinished output_dir always resumes, and one that holds a failed run of other settings is
    replaced. The caller's config is not changed: the run uses the complete config `inputs.resolve` returns."""
    if config.train.seeds:
        raise ConfigError("train.seeds asks for one run per seed: call tunelab.experiments.run_experiment")
    library_bars_off()
    distributed.start(config)  # several processes: join the group; files and events come from the main one
    events = Events(on_event if is_main_process() else None)
    opened = None
    with events.active(), sigterm_interrupts():
        try:
            check_machine(config)  # before the rows are read: the cheapest refusal first
            data = load_data(config)
            complete = resolve(config, data)
            opened = open_on_every_rank(complete, data, resume, events)
            distributed.check_same_config(dump_config(complete))
            start(complete, data, opened, events)
            summary = train_and_measure(complete, data, opened, auto_budget(config, complete, data), events)
        except BaseException as err:
            stopped = settle(config, opened, err, events)
            if stopped is err:
                raise
            raise stopped from None
        finally:
            if opened is not None and opened.lock is not None:
                opened.lock.close()
    return RunResult(opened.run_dir.path, summary)


def open_on_every_rank(config: RunConfig, data: RunData, resume: bool, events: Events) -> Opened:
    """The main process opens the run directory (`open_run_dir`); on a run of several processes the other ranks
    follow it: the same directory and checkpoint, no lock (the main process holds it) and a status that writes
    nothing (tunelab.rundir writes from the main process only)."""
    if not group_ready():
        return open_run_dir(config, data, resume, events)
    held: list[Opened] = []

    def open_here() -> tuple[Path, Path | None, dict[str, Any]]:
        held.append(open_run_dir(config, data, resume, events))
        return held[0].run_dir.path, held[0].resume_from, held[0].data_info

    path, resume_from, data_info = on_main(open_here)
    return held[0] if held else Opened(RunDir(path), Status(RunDir(path)), None, resume_from, data_info)


def open_run_dir(config: RunConfig, data: RunData, resume: bool, events: Events) -> Opened:
    """The run directory, locked, checked (continued, replaced or refused), with its status, event log and
    header written; from here on its status.json says what happens to the run."""
    run_dir = find_run_dir(config, resume)
    data_info = data.describe(config)
    earlier = None if resume else unfinished_like(config, data_info)
    if earlier is not None:
        step = (earlier.read_status() or {}).get("step")
        events.emit("unfinished_run", run_dir=str(earlier), state=earlier.state(), step=step,
                    message=f"an unfinished run of this config is in {earlier} ({earlier.state()}"
                            f"{f' at step {step}' if step else ''}): add --resume to continue it there; "
                            "starting a new run")
    refuse_foreign(run_dir)
    created = not run_dir.path.exists()
    lock = run_dir.lock()
    try:
        resume_from = prepare_resume(run_dir, config, data_info, resume, events)
        status = Status(run_dir).begin()
    except BaseException:
        lock.close()
        if created:  # refused (say, --resume of nothing): leave no directory behind
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    events.attach_log(run_dir.event_log())
    events.listen(status)
    return Opened(run_dir, status, lock, resume_from, data_info)


def start(config: RunConfig, data: RunData, opened: Opened, events: Events) -> None:
    """The header (config.yaml, data.json, versions.json) written, and the run running."""
    opened.run_dir.write_header(dump_config(config), opened.data_info)
    distributed.write_engine_files(config, opened.run_dir.path)
    events.emit("run_started", run_dir=str(opened.run_dir), model=config.model, task=config.task,
                method=config.method, train_rows=len(data.train.rows), eval_rows=len(data.held.rows),
                validation_rows=opened.data_info["validation_rows"])
    opened.status.set(state=RUNNING)


def settle(config: RunConfig, opened: Opened | None, err: BaseException, events: Events) -> BaseException:
    """Record how a run ended early, and return the error for the caller: failed, or interrupted (a Ctrl-C
    outside training becomes a RunInterrupted naming where it stopped, so the CLI can say how to resume)."""
    interrupted = isinstance(err, (KeyboardInterrupt, RunInterrupted))
    if opened is None:
        if not interrupted and config.output_dir is not None and is_main_process():
            record_early_failure(RunDir(config.output_dir), err, events)
        return err
    status = opened.status
    if interrupted:
        stopped = interruption(err, opened)
        events.emit("run_interrupted", signal="SIGTERM" if stopped.exit_code == 143 else "SIGINT",
                    step=status.record.get("step"), message=str(stopped).splitlines()[0])
        status.end(INTERRUPTED, {"type": type(stopped).__name__, "message": str(stopped)})
        return stopped
    events.emit("run_failed", error_type=type(err).__name__, error=str(err),
                message=f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    status.end(FAILED, {"type": type(err).__name__, "message": str(err)})
    return err


def interruption(err: BaseException, opened: Opened) -> RunInterrupted:
    """The training guard's own RunInterrupted (it names the checkpoint it saved), else one naming what the run
    was doing and what it keeps: the evidence measured before training, the training up to a checkpoint."""
    if isinstance(err, RunInterrupted) and err.run_dir is not None:
        return err
    code = err.exit_code if isinstance(err, RunInterrupted) else 130
    doing = str(opened.status.record.get("phase") or "starting").rstrip(" .")
    kept = ["the evidence measured before training"] if opened.run_dir.read_before() is not None else []
    sealed = [step for step, path in checkpoint_dirs(opened.run_dir.checkpoints_dir) if read_manifest(path)]
    if sealed:  # resume verifies the files; here the manifest, written last, is enough to name the step
        kept.append(f"the training up to step {sealed[-1]}")
    return RunInterrupted(f"{'SIGTERM' if code == 143 else 'Ctrl-C'} while {doing}; "
                          f"{'kept: ' + ' and '.join(kept) if kept else 'nothing to keep yet'}", code,
                          opened.run_dir.path)


def record_early_failure(run_dir: RunDir, err: BaseException, events: Events) -> None:
    """A run that failed before its directory was opened (bad data, a refused setting) still leaves a failed
    status in the output_dir it was given, unless that directory holds something else to keep."""
    if not (run_dir.is_empty() or run_dir.state() == FAILED):
        return
    try:
        lock = run_dir.lock()
    except TunelabError:
        return  # another process holds the directory: its status is its own
    try:
        status = Status(run_dir).begin()
        events.attach_log(run_dir.event_log())
        events.emit("run_failed", error_type=type(err).__name__, error=str(err),
                    message=f"failed before the run began: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        status.end(FAILED, {"type": type(err).__name__, "message": str(err)})
    finally:
        lock.close()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a job worker cancelling, `kill`) outside training stops the run as Ctrl-C does, so its status
    says interrupted; during training the trainer's guard finishes the step and saves first. A handler the
    caller installed is left alone, and so is any thread but the main one (handlers live there)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise RunInterrupted("SIGTERM: stopped", 143)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def train_and_measure(config: RunConfig, data: RunData, opened: Opened, budget: dict[str, Any] | None,
                      events: Events) -> dict[str, Any]:
    """The model loaded, measured, trained and measured again; the run directory's summary, model and report."""
    task, method, run_dir = get_task(config.task), get_method(config.method), opened.run_dir
    spec = task.model_spec(config, data.all_train)
    events.emit("phase", phase="loading", message=f"loading {config.model} ...")
    torch.manual_seed(config.train.seed)
    tokenizer, model = load_pair(resolve_model(config.model), spec, LoadRules.of(config),
                                 **method.load_options(config, spec))
    method.check_model(model, spec)
    events.emit("phase", phase="preparing", message=f"preparing {len(data.train.rows)} training rows ...")
    with scratch(run_dir.path):  # the training token ids go to a file every rank maps (data.token_table)
        prepared = task.prepare(config, tokenizer, data.train, data.held, events)
    validation_set = prepared.held_out if data.validation is None else \
        task.held_out(config, tokenizer, data.validation, None)
    best = evidence.early_stopping(config, task)
    zero_shot, before = measure_before(model, tokenizer, task, data, prepared, config, run_dir, events)
    model = method.apply(model, config, spec)
    trainable, total = count_params(model)
    events.emit("model_ready", trainable_params=trainable, total_params=total)

    trained = train(model, tokenizer, task, prepared, validation_set, config, run_dir, opened.resume_from, best, events)
    if best is not None:
        best.restore(model)
    events.emit("evaluating", which="after")
    with autocast(config.train.precision):  # as before training (tunelab.precision)
        after = task.evaluate(model, tokenizer, prepared.held_out, config)
        found = evidence.after_training(model, tokenizer, task, prepared, before, zero_shot, after, config,
                                        run_dir.path, best, trained["steps"], events)
    if best is not None:
        found["early_stopping"]["validation_rows"] = len(data.validation.rows)
    spread = distributed.describe(config, model)
    artifact_bytes = 0
    if is_main_process():  # one process writes the run's files (tunelab.ranks)
        events.emit("phase", phase="saving", message=f"saving the tuned model in {run_dir.model_dir} ...")
        method.save(model, run_dir.model_dir)
        artifact_bytes = directory_bytes(run_dir.model_dir)  # what the method wrote, before the tokenizer joins it
        tokenizer.save_pretrained(run_dir.model_dir)

    summary = {"before": zero_shot.metrics, "after": after.metrics, "train": {**trained, "auto_budget": budget},
               "trainable_params": trainable, "total_params": total,
               "resources": {"artifact_bytes": artifact_bytes, **peak_memory()},
               "model": config.model, "method": config.method, "task": config.task, "distributed": spread,
               "method_info": method.info(model),
               "metrics": prepared.metrics, **prepared.info, **found}
    if is_main_process():
        if "tuned" in found["cost"]:  # saved and described: the adapter may now be merged, to time it as served
            events.emit("evaluating", which="merged", what="the cost of an answer from the merged tuned model")
            merged = evidence.merged_cost(method, model, tokenizer, prepared.held_out, config)
            if merged:
                summary["cost"]["tuned_merged"] = merged
        summary["prompting"] = weigh(summary, headline_metric(summary))  # what the verdict's prompting line says
        finish(run_dir, summary, zero_shot, after, before, config, opened.status, events)
    return summary


def finish(run_dir: RunDir, summary: dict[str, Any], zero_shot: Any, after: Any, before: Any, config: RunConfig,
           status: Status, events: Events) -> None:
    run_dir.write_after(rows.encode({"rows": after.rows}))  # another run on the same rows compares with intervals
    run_dir.write_summary(summary)
    run_dir.write_samples(zero_shot.samples, after.samples, {k: b.scores.samples for k, b in before.baselines.items()})
    write_report(run_dir.path, summary, config.eval.report_examples)
    if not config.train.keep_optimizer_state:  # finished: the optimizer and RNG pickles have no further use
        keep_weights_only(run_dir.checkpoints_dir)
    events.emit("run_finished", run_dir=str(run_dir))
    status.end(SUCCEEDED)


def measure_before(model: torch.nn.Module, tokenizer: Any, task: Task, data: RunData, prepared: Any,
                   config: RunConfig, run_dir: RunDir, events: Events) -> tuple[Any, evidence.Before]:
    """The untuned model's held-out scores and the evidence around them (baselines, probe, train sample); a
    resumed run reads them back from the run directory instead of measuring them again."""
    saved = run_dir.read_before()
    if saved is not None:
        zero_shot, before = evidence.before_from_record(saved)
        events.emit("reused", what="the scores, baselines and probe measured before training")
    else:
        events.emit("evaluating", which="before")
        with autocast(config.train.precision):  # every scoring pass in the precision the run trains in
            zero_shot = task.evaluate(model, tokenizer, prepared.held_out, config)
            before = evidence.before_training(model, tokenizer, task, data.train, data.held, prepared, config,
                                              events)
        run_dir.write_before(evidence.before_record(zero_shot, before))
    task.note_before(prepared.held_out, zero_shot)
    return zero_shot, before


def train(model: torch.nn.Module, tokenizer: Any, task: Task, prepared: Any, validation_set: Any, config: RunConfig,
          run_dir: RunDir, resume_from: Path | None, best: Any, events: Events) -> dict[str, Any]:
    """The task's trainer under every guard, validating on `validation_set`; returns the summary's `train` entry."""
    progress = Progress(events, run_dir.metrics_log(),
                        evidence.validation(task, tokenizer, validation_set, config, best),
                        config.train.eval_steps, best=best, model=model)
    watched = config.train.best_metric if best is not None else "eval_loss"

    def build(cfg: RunConfig) -> Any:
        return quiet(task.trainer(model, tokenizer, prepared, common_args(cfg, run_dir.checkpoints_dir), [progress]))

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
