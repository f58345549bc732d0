"""Progress as events: typed records a run emits once and anyone may read.

An event is (kind, level, message, fields). The run emits it; it goes to the listeners in this process
(the CLI's console, a test, a job worker that called `run()`) and, once the run directory exists, to
its `events.jsonl` (see `rundir.EventLog`), where a reader in another process tails it. Every kind is
declared in `KINDS` with its level, its fields and the words it says, so the CLI prints the same
message a dashboard shows. Records carry `SCHEMA`; docs/run-directory.md describes them.

Loops that take a while (scoring rows, generating answers) count their progress with `counting`: it
reports to the events of the run active in this thread (`Events.active`) and does nothing elsewhere,
so scoring code takes no events argument.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1
# Levels. "progress" records (steps, rows scored) move bars; the others are lines a person reads.
PROGRESS, INFO, WARNING, ERROR = "progress", "info", "warning", "error"
LEVELS = (PROGRESS, INFO, WARNING, ERROR)
COUNT_INTERVAL = 1.0  # seconds between two progress records of one counted loop (the first and last always go)


@dataclass(frozen=True)
class Kind:
    """An event kind: its level, the fields it carries, and its message: str.format over the fields, a
    function of them, or empty when the emitter words it."""

    level: str
    fields: tuple[str, ...]
    says: str | Callable[[dict[str, Any]], str] = ""

    def words(self, kind: str, fields: dict[str, Any]) -> str:
        if callable(self.says):
            return self.says(fields)
        return self.says.format(**fields) if self.says else kind


def _started(f: dict[str, Any]) -> str:
    validation = f", {f['validation_rows']} validation rows set aside" if f.get("validation_rows") else ""
    return f"run dir {f['run_dir']}  ({f['train_rows']} train rows{validation}, {f['eval_rows']} held-out rows)"


def _evaluating(f: dict[str, Any]) -> str:
    return f"evaluating {f.get('what') or f['which'] + ' training on the held-out set'} ..."


def _scoring(f: dict[str, Any]) -> str:
    which = "best" if f["trial"] is not None else "unchanged"
    return f"scoring the {which} config on the held-out set: {f['run_dir']}"


def _share(f: dict[str, Any]) -> str:
    share = 100 * f["trainable_params"] / max(f["total_params"], 1)
    return f"training {f['trainable_params']:,} of {f['total_params']:,} parameters ({share:.2f}%)"


KINDS: dict[str, Kind] = {
    # the run's life (status.json follows these)
    "run_started": Kind(INFO, ("run_dir", "model", "task", "method", "train_rows", "eval_rows", "validation_rows"),
                        _started),
    "run_replaced": Kind(WARNING, ("run_dir", "error")),
    "unfinished_run": Kind(WARNING, ("run_dir", "state", "step")),
    "resumed": Kind(INFO, ("step", "checkpoint")),
    "phase": Kind(INFO, ("phase",)),
    "evaluating": Kind(INFO, ("which", "what"), _evaluating),
    "model_ready": Kind(INFO, ("trainable_params", "total_params"), _share),
    "reused": Kind(INFO, ("what",), "reusing {what} measured before this run was interrupted"),
    "run_finished": Kind(INFO, ("run_dir",), "finished: {run_dir}"),
    "run_failed": Kind(ERROR, ("error_type", "error")),
    "run_interrupted": Kind(WARNING, ("signal", "step")),
    "stopping": Kind(WARNING, ("signal",)),
    # training
    "train_started": Kind(PROGRESS, ("max_steps", "start_step"), "training from step {start_step} of {max_steps}"),
    "step": Kind(PROGRESS, ("step", "max_steps", "loss", "tokens_per_second"), "step {step}/{max_steps}"),
    "train_finished": Kind(PROGRESS, ("step",), "training ended at step {step}"),
    "validating": Kind(INFO, ("step",), "step {step}: validating ..."),
    "validation": Kind(INFO, ("step", "epoch", "metrics")),
    "saving_checkpoint": Kind(INFO, ("step",), "step {step}: saving a checkpoint ..."),
    "checkpoint_saved": Kind(INFO, ("step", "path"), "step {step}: checkpoint saved in {path}"),
    "step_skipped": Kind(WARNING, ("step", "learning_rate")),
    "batch_backoff": Kind(WARNING, ("step", "batch_size", "grad_accum")),
    "world_size_changed": Kind(WARNING, ()),  # resumed on another number of processes: what was adjusted
    # counted loops: rows scored, answers generated, ...
    "progress": Kind(PROGRESS, ("what", "done", "total", "unit", "rate", "eta_seconds"), "{what}: {done}/{total} {unit}"),
    "warning": Kind(WARNING, ()),
    # experiments above single runs
    "seed_started": Kind(INFO, ("seed", "of", "run_dir"), "seed {seed} ({of} seeds): {run_dir}"),
    "seed_reused": Kind(INFO, ("seed", "run_dir"), "seed {seed}: finished before, reusing {run_dir}"),
    "trial_started": Kind(INFO, ("trial", "of", "params"), lambda f: f"trial {f['trial']}"
                                                                  + (f" (of {f['of']})" if f["of"] != math.inf else "")
                                                                  + ": "
                                                                  + (", ".join(f"{k}={v}" for k, v in f["params"].items())
                                                                     or "the unchanged settings")),
    "trial_finished": Kind(INFO, ("trial", "metric", "value"),
                           lambda f: f"trial {f['trial']}: {f['metric']} {f['value']:.4g} on validation"),
    "trial_pruned": Kind(INFO, ("trial", "step", "value"), "trial {trial}: pruned at step {step} (behind earlier trials)"),
    "waiting": Kind(INFO, ()),
    "entry_started": Kind(INFO, ()),
    "scoring_held_out": Kind(INFO, ("run_dir", "trial"), _scoring),
    "improve_resumed": Kind(INFO, ()),
    "improve_confirming": Kind(INFO, ()),
    "improve_synthesizing": Kind(INFO, ()),
    # export
    "export_started": Kind(INFO, ("run_dir", "format"), "exporting {run_dir} as {format} ..."),
    "export_writing": Kind(INFO, ("file",), "writing {file} ..."),
    "export_checked": Kind(INFO, ("check", "passed")),
    "export_finished": Kind(INFO, ("out", "bytes", "passed")),
}


@dataclass(frozen=True)
class Event:
    """One record: what happened (kind), how much it matters (level), the words a person reads (message)
    and the numbers a program reads (fields). `seq` counts a run's events from 1."""

    kind: str
    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    seq: int = 0

    def record(self) -> dict[str, Any]:
        """The JSON object events.jsonl holds for this event."""
        return {"v": SCHEMA, "seq": self.seq, "time": self.time, "kind": self.kind, "level": self.level,
                "message": self.message, "fields": self.fields}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        return cls(str(record["kind"]), str(record["level"]), str(record.get("message", "")),
                   dict(record.get("fields") or {}), float(record.get("time", 0.0)), int(record.get("seq", 0)))


Listener = Callable[[Event], None]
_ACTIVE: ContextVar[Events | None] = ContextVar("tunelab_active_events", default=None)


class Events:
    """Where a run's events go: its listeners now, and its log once there is one (earlier events are kept
    and written first, so the log starts with everything the run said)."""

    def __init__(self, listener: Listener | None = None):
        self.listeners: list[Listener] = [listener] if listener is not None else []
        self.log: Listener | None = None
        self.pending: list[Event] = []
        self.seq = 0

    def emit(self, kind: str, message: str | None = None, **fields: Any) -> Event:
        spec = KINDS.get(kind)
        if spec is None:
            raise ValueError(f'event kind "{kind}" is not declared in tunelab.events.KINDS')
        self.seq += 1
        words = message if message is not None else spec.words(kind, fields)
        event = Event(kind, spec.level, words, fields, time.time(), self.seq)
        if self.log is not None:
            self.log(event)
        else:
            self.pending.append(event)
        for listener in list(self.listeners):
            listener(event)  # a listener may raise to stop the run (a sweep's pruner does)
        return event

    def attach_log(self, log: Listener) -> None:
        """Send every event to `log` from now on, after the ones emitted before it existed."""
        for event in self.pending:
            log(event)
        self.pending.clear()
        self.log = log

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def tell(self, event: Event) -> None:
        """Hand these listeners an event emitted elsewhere (a run inside a sweep), as it is."""
        for listener in list(self.listeners):
            listener(event)

    @contextmanager
    def active(self) -> Iterator[Events]:
        """Make these the events `counting` reports to, in this thread, while the block runs."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


class Counter:
    """Counts a loop's work and reports it as `progress` events, at most one per COUNT_INTERVAL."""

    def __init__(self, events: Events | None, what: str, total: int, unit: str):
        self.events, self.what, self.total, self.unit = events, what, total, unit
        self.done, self.started, self.reported = 0, time.monotonic(), -1.0

    def advance(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        """`done` items so far (a loop that knows its position inside a batch reports it)."""
        if done == self.done:
            return
        self.done = done
        now = time.monotonic()
        if self.done >= self.total or now - self.reported >= COUNT_INTERVAL:
            self.report(now)

    def report(self, now: float) -> None:
        if self.events is None:
            return
        self.reported = now
        elapsed = now - self.started
        rate = self.done / elapsed if self.done and elapsed > 0 else None
        eta = (self.total - self.done) / rate if rate else None
        self.events.emit("progress", what=self.what, done=self.done, total=self.total, unit=self.unit,
                         rate=round(rate, 3) if rate else None, eta_seconds=round(eta, 1) if eta is not None else None)


@contextmanager
def counting(what: str, total: int, unit: str = "rows") -> Iterator[Counter]:
    """A counter for a loop over `total` items, reporting to the active run's events (if any)."""
    counter = Counter(_ACTIVE.get(), what, total, unit)
    counter.report(time.monotonic())
    yield counter


def batch_starts(what: str, total: int, size: int, unit: str = "rows") -> Iterator[int]:
    """range(0, total, size), each batch reported as done (when the loop comes back for the next) to the active
    run's events."""
    with counting(what, total, unit) as counter:
        for start in range(0, total, size):
            yield start
            counter.advance(min(size, total - start))
