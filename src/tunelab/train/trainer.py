"""The arguments tunelab sets for every trainer, and the callback that turns training into events.

The training loop, optimizer, schedule, gradient accumulation and checkpoint format belong to the
task's trainer (transformers' Trainer or a library trainer built on it); tunelab adds validation on
the task's own metrics, metrics.jsonl and progress events.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback

from tunelab.config import RunConfig
from tunelab.distributed import common_training_args
from tunelab.ranks import from_main
from tunelab.errors import ConfigError
from tunelab.events import Events
from tunelab.methods import get_method
from tunelab.precision import resolve
from tunelab.rundir import MetricsLog

Validate = Callable[[torch.nn.Module], dict[str, float]]


def precision_flags(precision: str) -> dict[str, bool]:
    """The Trainer's precision arguments for `train.precision` on this machine (see tunelab.precision)."""
    resolved = resolve(precision)
    return {"bf16": resolved == "bf16", "fp16": resolved == "fp16", "use_cpu": not torch.cuda.is_available()}


def liger_flag(wanted: bool) -> dict[str, bool]:
    """transformers' use_liger_kernel, after checking what it needs: a CUDA device and the package."""
    if not wanted:
        return {}
    if not torch.cuda.is_available():
        raise ConfigError("train.liger=true needs a CUDA GPU (Liger's kernels are written in Triton); this machine "
                          "has none: leave train.liger off")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.liger=true needs the liger-kernel package: pip install 'tunelab[gpu]'")
    return {"use_liger_kernel": True}


def precision_name(args: Any) -> str:
    """The precision a trainer's arguments train in: bf16, fp16 or fp32."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def common_args(config: RunConfig, checkpoint_dir: Path) -> dict[str, Any]:
    """TrainingArguments fields every task's trainer gets (a TRL config takes the same fields)."""
    t = config.train
    if t.epochs == "auto":
        raise ConfigError("train.epochs=auto is a budget the run resolves from the data (train.budget.resolve_epochs); "
                          "resolve it, or set train.epochs or train.max_steps, before building trainer arguments")
    args = dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=None,  # train/checkpoint.py rotates, counting only checkpoints whose manifest verifies
        seed=t.seed,
        data_seed=t.seed,
        activation_checkpointing=t.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **precision_flags(t.precision),
        **liger_flag(t.liger),
        **get_method(config.method).training_args(config),
    )
    return {**args, **common_training_args(config)}  # several processes: tunelab.distributed


class Progress(TrainerCallback):
    """Turns the trainer's state into metrics.jsonl rows and progress events; validates on schedule."""

    def __init__(self, events: Events, metrics: MetricsLog, validate: Validate | None, eval_steps: int,
                 best: Any = None, model: torch.nn.Module | None = None):
        self.events, self.metrics = events, metrics
        # The run's model is what validations score and early stopping keeps; a library trainer may train
        # it wrapped (sentence-transformers), and hands callbacks the wrapper.
        self.model = model
        self.best = best  # an eval.early_stopping.BestWeights, or None
        self.measure, self.eval_steps = validate, eval_steps
        self.started = time.monotonic()
        self.tokens_at_start = self.steps_at_start = 0
        self.last_loss: float | None = None
        self.pending_step = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.tokens_at_start, self.steps_at_start = state.num_input_tokens_seen, state.global_step
        self.events.emit("train_started", max_steps=state.max_steps, start_step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.pending_step:
            self.emit_step(state)
        self.events.emit("train_finished", step=state.global_step)

    def tokens_per_second(self, state) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (state.num_input_tokens_seen - self.tokens_at_start) / elapsed

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # The last step is logged whatever logging_steps says (a short run still has a loss and a curve); a
        # logged step's event waits for the loss the trainer logs next (on_log), so the bar shows it.
        control.should_log = control.should_log or state.global_step >= state.max_steps
        self.pending_step = control.should_log
        if not self.pending_step:
            self.emit_step(state)
        if self.eval_steps and state.global_step % self.eval_steps == 0:
            self.validate(state, model, control)
        control.should_log = control.should_log or control.should_training_stop  # stopped early: its last step

    def emit_step(self, state) -> None:
        self.pending_step = False
        self.events.emit("step", step=state.global_step, max_steps=state.max_steps, loss=self.last_loss,
                         tokens_per_second=self.tokens_per_second(state))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.eval_steps:
            self.validate(state, model, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.last_loss = float(logs["loss"])
        self.metrics.append({
            "step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "train_loss": self.last_loss,
            "learning_rate": logs.get("learning_rate"), "grad_norm": _num(logs.get("grad_norm")),
            "tokens_seen": int(state.num_input_tokens_seen), "tokens_per_second": round(self.tokens_per_second(state), 2),
            **{k: _num(v) for k, v in logs.items() if k in RL_LOGS or k.startswith("rewards/")},
        })
        if self.pending_step:
            self.emit_step(state)

    def validate(self, state, model, control=None) -> None:
        model = self.model if self.model is not None else model
        if self.measure is None or model is None:
            return
        self.events.emit("validating", step=state.global_step)
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **self.measure(model)}
        self.metrics.append(record)
        metrics = {k: v for k, v in record.items()  # numbers only: per-row losses stay in metrics.jsonl
                   if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.events.emit("validation", step=record["step"], epoch=record["epoch"], metrics=metrics,
                         message=validation_words(record["step"], metrics))
        # every rank scores the same rows with the same weights; the main process's verdict holds for all of them
        if self.best is not None and from_main(self.best.observe(state.global_step, record, model)) \
                and control is not None:
            control.should_training_stop = True


# What online RL (TRL's GRPO and RLOO) logs of its rewards each logging step: the training reward's mean and spread,
# each reward function's, and the share of completions a grader could not grade.
RL_LOGS = ("reward", "reward_std", "grader_errors")


def validation_words(step: int, metrics: dict[str, Any]) -> str:
    """`step 10: eval loss 1.2345 (exact match 40.0%, ...)`: what a validation measured, as a person reads it."""
    from tunelab.eval.report import fmt
    from tunelab.scoring.metrics import describe

    shown = [f"{describe(k).label} {fmt(k, v)}" for k, v in metrics.items()
             if k != "eval_loss" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    loss = f"eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "validated"  # RL has no held-out loss
    return f"step {step}: {loss}" + (f" ({', '.join(shown)})" if shown else "")


def library_bars_off() -> None:
    """The libraries' own progress bars (datasets' "Tokenizing train dataset", transformers' downloads) off:
    a run reports progress as events, and the CLI draws those."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def quiet(trainer: Any) -> Any:
    """Progress goes out as events, not as printed dicts."""
    trainer.remove_callback(PrinterCallback)
    return trainer
