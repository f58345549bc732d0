"""Guards around Trainer's loop: non-finite losses and gradients, termination signals, out-of-memory.

Each guard is a TrainerCallback or a wrapper around `trainer.train`; Trainer's loop itself is unchanged.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput

from tunelab.config import RunConfig
from tunelab.errors import RunAborted, RunInterrupted
from tunelab.models.safety import plain_tensors_only
from tunelab.rundir import RunDir
from tunelab.train.checkpoint import CheckpointKeeper, SaveAtEnd, latest_complete, step_of
from tunelab.events import Events


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


class NanGuard(TrainerCallback):
    """Skips an optimizer step whose loss or gradients are NaN/Inf; stops after `max_bad` in a row.

    The loss is the one the trainer's `training_step` returns, whatever computed it (a model's forward,
    a TRL or sentence-transformers loss), so the guard works for every trainer. A skipped step sets
    every gradient to None, so AdamW leaves weights and moments untouched (the schedule still
    advances). Before any checkpoint is written the trainable weights are checked, so no checkpoint
    ever holds non-finite weights.
    """

    def __init__(self, events: Events, max_bad: int):
        self.events, self.max_bad = events, max_bad
        self.bad_in_row = 0
        self.loss_bad = False

    def watch(self, trainer: Trainer) -> None:
        """Check each micro-batch's loss as this trainer's training_step returns it (this instance only)."""
        step = trainer.training_step

        def checked(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = step(*args, **kwargs)
            if isinstance(loss, torch.Tensor) and not bool(loss.detach().isfinite().all()):
                self.loss_bad = True
            return loss

        trainer.training_step = checked

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = trainable(model)
        grads = [p.grad for p in params if p.grad is not None]
        bad = self.loss_bad or not all_finite(grads)
        self.loss_bad = False
        if not bad:
            self.bad_in_row = 0
            return
        for p in params:
            p.grad = None
        self.bad_in_row += 1
        step, lr = state.global_step + 1, optimizer.param_groups[0]["lr"]
        if self.bad_in_row >= self.max_bad:
            raise RunAborted(
                f"step {step}: loss or gradients were NaN/Inf for {self.bad_in_row} steps in a row at learning rate "
                f"{lr:.3g}; try a lower train.learning_rate (e.g. {lr / 10:.1e}), precision=fp32, or check the "
                f"training rows of these steps (train.max_bad_steps={self.max_bad})")
        self.events.emit("step_skipped", step=step, learning_rate=lr,
                         message=f"step {step}: non-finite loss or gradient; step skipped "
                                 f"({self.bad_in_row} of {self.max_bad} allowed in a row)")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and not all_finite(trainable(model)):
            raise RunAborted(f"step {state.global_step}: the trained weights hold NaN/Inf; no checkpoint was "
                             "written. Try a lower train.learning_rate or precision=fp32")


class SignalStop(TrainerCallback):
    """SIGTERM or Ctrl-C during training: finish the current step, save a checkpoint, then stop.

    A second signal stops at once (the previous complete checkpoint stays resumable). A signal that was
    ignored before (a background job, nohup, some CI runners) stays ignored, as Python itself leaves it.
    """

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self, run_dir: Path, events: Events | None = None):
        self.run_dir, self.events = run_dir, events
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.signum is not None:
            raise RunInterrupted(f"{name} again: stopped at once; the last complete checkpoint is kept",
                                 self.EXIT_CODES[signum], run_dir=self.run_dir)
        self.signum = signum
        if self.events is not None:  # answered at once: the step may take a while yet
            self.events.emit("stopping", signal=signal.Signals(signum).name,
                             message=f"{name}: stopping after this step and saving a checkpoint "
                                     f"({name} again stops at once) ...")

    @contextmanager
    def installed(self) -> Iterator[SignalStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread (e.g. not in a job worker)
            return
        # getsignal gives None for a handler set outside Python: it could not be put back, so leave it too.
        taken = [s for s in self.EXIT_CODES if signal.getsignal(s) not in (signal.SIG_IGN, None)]
        previous = {s: signal.signal(s, self._handle) for s in taken}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True

    def raise_if_stopped(self, step: int, checkpoint: Path | None) -> None:
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        raise RunInterrupted(f"{name} at step {step}: checkpoint saved in {checkpoint}",
                             self.EXIT_CODES[self.signum], run_dir=self.run_dir)


class _NothingLeft(Exception):
    pass


class StopWhenDone(TrainerCallback):
    """Trainer resumed from a checkpoint written at max_steps still runs one more step (measured with
    transformers 5.23); stop before it, once the checkpoint's weights and state are loaded."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise _NothingLeft


def _last_loss(state) -> float | None:
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return losses[-1] if losses else None


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_batch(batch_size: int, grad_accum: int, step: int, multiple: int = 1) -> tuple[int, int]:
    """After an OOM: the largest micro-batch that divides the current one (half, when it is even) and is a
    multiple of what the task requires, with accumulation raised to keep the effective batch the same."""
    for micro in range(batch_size // 2, 0, -1):
        if batch_size % micro == 0 and micro % multiple == 0:
            return micro, grad_accum * (batch_size // micro)
    smallest = "train.batch_size=1" if multiple == 1 else f"train.batch_size={batch_size} (the task needs " \
                                                            f"a multiple of {multiple})"
    raise RunAborted(f"step {step}: out of memory even with {smallest}; try "
                     "train.gradient_checkpointing=true, a smaller train.max_length, or method=lora")


def train_guarded(build: Callable[[RunConfig], Trainer], config: RunConfig, run_dir: RunDir,
                  resume_from: Path | None, events: Events, batch_multiple: int = 1,
                  best: tuple[str, bool] = ("eval_loss", False)) -> tuple[Trainer, Any]:
    """`trainer.train` under every guard; an OOM rebuilds the trainer with a smaller micro-batch and retries."""
    checkpoints = run_dir.checkpoints_dir
    stop = SignalStop(run_dir.path, events)
    # Order matters in on_step_end: a signal or the end asks for a save first, then NanGuard vets the weights
    # to be saved, then the keeper says a save is coming.
    nan_guard = NanGuard(events, config.train.max_bad_steps)
    guards = [stop, SaveAtEnd(config.train.save_steps > 0), nan_guard,
              CheckpointKeeper(checkpoints, config.train.save_total_limit, run_dir.metrics_path, events, best),
              StopWhenDone()]
    with stop.installed():
        while True:
            trainer = build(config)
            for guard in guards:
                trainer.add_callback(guard)
            nan_guard.watch(trainer)
            start = step_of(resume_from)
            try:
                with plain_tensors_only(resume_from or checkpoints), own_forward_after(trainer):
                    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
                break
            except _NothingLeft:
                output = TrainOutput(trainer.state.global_step, _last_loss(trainer.state), {})
                break
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                step = trainer.state.global_step
            del trainer
            release_memory()
            config, resume_from = _back_off(config, run_dir, step, start, resume_from, events, batch_multiple)
    stop.raise_if_stopped(trainer.state.global_step, latest_complete(checkpoints))
    return trainer, output


@contextmanager
def own_forward_after(trainer: Trainer) -> Iterator[None]:
    """The model's forward as it was before training, however training ends. Under bf16/fp16, accelerate sets
    an autocast wrapper as the model's instance `forward` and leaves it there (wrapping it again for each
    trainer an OOM back-off builds); scoring chooses its precision itself (tunelab.precision). accelerate's own
    unwrapping (keep_fp32_wrapper=False) follows `__wrapped__` past decorators of the model's forward, so the
    attributes are put back as they were instead, with the mark that makes accelerate skip a model it
    prepared before (the next trainer must wrap it again)."""
    model = trainer.model
    keys = ("forward", "_original_forward", "_is_accelerate_prepared")
    before = {key: model.__dict__[key] for key in keys if key in model.__dict__}
    try:
        yield
    finally:
        for key in keys:
            model.__dict__.pop(key, None)
        model.__dict__.update(before)


def _back_off(config: RunConfig, run_dir: RunDir, step: int, start: int, resume_from: Path | None,
              events: Events, multiple: int) -> tuple[RunConfig, Path | None]:
    """Halve the micro-batch; continue from where the weights are known: unchanged, or the last checkpoint."""
    t = config.train
    batch, accum = smaller_batch(t.batch_size, t.grad_accum, step + 1, multiple)
    if step > start:  # weights moved since the last known state: go back to the newest complete checkpoint
        resume_from = latest_complete(run_dir.checkpoints_dir, events)
        if resume_from is None:
            raise RunAborted(f"step {step + 1}: out of memory after training began, with no checkpoint to return "
                             f"to; rerun with train.batch_size={batch} train.grad_accum={accum}")
    restart = step_of(resume_from)
    run_dir.trim_metrics(restart)
    events.emit("batch_backoff", step=step + 1, batch_size=batch, grad_accum=accum,
                message=f"step {step + 1}: out of memory with train.batch_size={t.batch_size} "
                        f"grad_accum={t.grad_accum}; retrying from step {restart} with batch_size={batch} "
                        f"grad_accum={accum} (same effective batch of {batch * accum})")
    smaller = t.model_copy(update={"batch_size": batch, "grad_accum": accum})
    return config.model_copy(update={"train": smaller}), resume_from
