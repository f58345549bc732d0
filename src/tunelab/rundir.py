"""The run directory: the unit everything else reads, and the one module that names its files.

`RunDir` reads and writes a run's config, summary, metrics, status, events, samples, the evidence
measured before training and the tuned model's directory; no other module spells those names. Every
file is written atomically (a temp file renamed over it) or appended line by line and flushed, so a
reader in another process (a job worker, a dashboard) never sees half a record. docs/run-directory.md
describes the layout, the status states and the event records.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.events import SCHEMA, Event
from tunelab.ranks import is_main_process

TRACKED = ("tunelab", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors")

# The states status.json holds. A reader derives DEAD from a "created" or "running" record whose
# process is gone or whose heartbeat stopped (a SIGKILL, a power cut): nobody is left to write it.
CREATED, RUNNING, SUCCEEDED, FAILED, INTERRUPTED = "created", "running", "succeeded", "failed", "interrupted"
DEAD = "dead"
LIVE = (CREATED, RUNNING)
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = 6 * HEARTBEAT_SECONDS


def choose_run_dir(config: Any) -> Path:
    if config.output_dir is not None:
        return Path(config.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}-{stamp}"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside the target, fsync, then rename: readers never see half a file.
    On a run of several processes only the main one writes (the others hold the same values)."""
    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def directory_bytes(path: Path) -> int:
    """Bytes on disk of every file under a directory (an artifact's size)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in TRACKED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def metrics_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"


def append_line(path: Path, line: str) -> None:
    if not is_main_process():  # one process writes the run's files, as write_atomic
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as training goes."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.path, metrics_line(record))


def read_jsonl(path: Path, valid: Any, expected: str) -> list[dict[str, Any]]:
    """The records of an append-only JSON-lines file ([] when there is none yet).

    A kill can tear only the line being appended, so an unreadable last line is dropped; an unreadable
    line before it means the file was damaged some other way, and that is an error.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and valid(record):
            records.append(record)
        elif number < len(lines):
            raise TunelabError(f"{path}:{number}: expected {expected}, got {line[:80]!r}")
    return records


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl ([] when there is none yet; a torn last line is dropped)."""
    return read_jsonl(path, lambda r: isinstance(r.get("step"), int), 'a JSON object with an integer "step"')


def _is_event(record: dict[str, Any]) -> bool:
    return isinstance(record.get("kind"), str) and isinstance(record.get("v"), int)


def read_events(path: Path) -> list[Event]:
    """Every event of an events.jsonl, oldest first (a torn last line is dropped)."""
    return [Event.from_record(r) for r in read_jsonl(path, _is_event, 'an event record ("v", "kind", ...)')]


def tail_events(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    """The whole event lines written after byte `offset`, and the offset to read from next time: a reader
    in another process polls this while the run appends (a line still being written waits for the next poll)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    found = []
    for line in complete.decode("utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill, then appended after: skip it, as read_events does
        if isinstance(record, dict) and _is_event(record):
            found.append(Event.from_record(record))
    return found, offset + len(complete)


class EventLog:
    """events.jsonl: one record per line (Event.record), appended and flushed as the run emits them."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, event: Event) -> None:
        append_line(self.path, json.dumps(event.record(), default=str) + "\n")


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22), to tell a reused pid apart;
    None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process holds the pid
    return started is None or process_start(pid) in (None, started)


def effective_state(status: dict[str, Any], now: float | None = None) -> str:
    """The state a reader should believe: DEAD for a live-looking record whose process is gone (on this host)
    or whose heartbeat is older than STALE_AFTER; the recorded state otherwise."""
    state = status.get("state")
    if state not in LIVE:
        return str(state)
    now = time.time() if now is None else now
    if now - float(status.get("heartbeat_at") or 0) > STALE_AFTER:
        return DEAD
    if status.get("host") == socket.gethostname() and isinstance(status.get("pid"), int):
        if not process_alive(status["pid"], status.get("process_start")):
            return DEAD
    return str(state)


class RunDir:
    """One run directory. Readers ask it for records; writers (train.run and its parts) go through it."""

    CONFIG, SUMMARY, METRICS, STATUS, EVENTS = "config.yaml", "summary.json", "metrics.jsonl", "status.json", "events.jsonl"
    DATA, VERSIONS, SAMPLES, BEFORE, AFTER = "data.json", "versions.json", "samples.jsonl", "before.json", "after.json"
    MODEL, CHECKPOINTS = "model", "checkpoints"
    LOCK = ".lock"  # held (flock) by the process writing the run; the kernel lets go when it dies

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def events_path(self) -> Path:
        return self.path / self.EVENTS

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    # reading
    def read_config_text(self) -> str:
        return self.config_path.read_text(encoding="utf-8")

    def read_config(self) -> dict[str, Any]:
        """config.yaml as the mapping it holds (validation is the config module's: `inputs.open_run`)."""
        import yaml

        try:
            raw = yaml.safe_load(self.read_config_text())
        except (OSError, yaml.YAMLError) as err:
            raise TunelabError(f"{self.config_path}: cannot read the run's config: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise TunelabError(f"{self.config_path}: expected a mapping of settings, got {type(raw).__name__}")
        return raw

    def _read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise TunelabError(f"{self.path / name}: unreadable ({err})") from None

    def read_summary(self) -> dict[str, Any] | None:
        return self._read_json(self.SUMMARY)

    def read_data_info(self) -> dict[str, Any]:
        return self._read_json(self.DATA) or {}

    def read_status(self) -> dict[str, Any] | None:
        return self._read_json(self.STATUS)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def read_events(self) -> list[Event]:
        return read_events(self.events_path)

    def read_samples(self, n: int) -> list[dict[str, Any]]:
        path = self.path / self.SAMPLES
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n] if line.strip()]

    def read_before(self) -> dict[str, Any] | None:
        return self._read_json(self.BEFORE)

    def read_after(self) -> dict[str, Any] | None:
        """The tuned model's held-out metrics row by row (`scoring.rows` JSON), or None for a run from before."""
        return self._read_json(self.AFTER)

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def has_model(self) -> bool:
        return self.model_dir.is_dir()

    def state(self) -> str | None:
        """succeeded | failed | interrupted | created | running | dead, or None for a directory that holds no
        run. A run from before status.json existed counts as succeeded with a summary, else interrupted."""
        status = self.read_status()
        if status is not None:
            return effective_state(status)
        if (self.path / self.SUMMARY).is_file():
            return SUCCEEDED
        return INTERRUPTED if self.has_config() else None

    def finished(self) -> bool:
        return self.state() == SUCCEEDED and (self.path / self.SUMMARY).is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or (self.path.is_dir() and all(p.name == self.LOCK for p in self.path.iterdir()))

    def lock(self) -> Any:
        """Take the directory for this process (an open file holding an exclusive flock; close it to let go);
        refused while another process holds it, whatever its status.json says."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / self.LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            status = self.read_status() or {}
            raise TunelabError(f"{self.path}: another process is writing a run there (pid {status.get('pid')}); "
                               "wait for it, stop it, or choose another output_dir") from None
        return handle

    # writing
    def write_header(self, config_yaml: str, data: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, config_yaml)
        write_json(self.path / self.VERSIONS, versions())
        write_json(self.path / self.DATA, data)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / self.SUMMARY, summary)

    def write_before(self, record: dict[str, Any]) -> None:
        write_json(self.path / self.BEFORE, record)

    def write_after(self, record: dict[str, Any]) -> None:
        write_json(self.path / self.AFTER, record)

    def metrics_log(self) -> MetricsLog:
        return MetricsLog(self.metrics_path)

    def event_log(self) -> EventLog:
        return EventLog(self.events_path)

    def write_samples(self, before: list[dict[str, Any]], after: list[dict[str, Any]],
                      baselines: dict[str, list[dict[str, Any]]]) -> None:
        """samples.jsonl: one line per held-out row; the answers are matched on the row's line, never on position."""
        tuned = {s["line"]: s["output"] for s in after}
        others = {name: {s["line"]: s["output"] for s in samples} for name, samples in baselines.items()}
        lines = [json.dumps({"line": b["line"], "prompt": b["prompt"], "reference": b["reference"], "before": b["output"],
                             **{name: outs.get(b["line"]) for name, outs in others.items()}, "after": tuned[b["line"]]})
                 for b in before]
        write_atomic(self.path / self.SAMPLES, "".join(line + "\n" for line in lines))

    def trim_metrics(self, step: int) -> None:
        """Drop metrics recorded after `step` (they are recomputed on resume), and any half-written line."""
        if self.metrics_path.is_file():
            write_atomic(self.metrics_path, "".join(metrics_line(r) for r in self.read_metrics() if r["step"] <= step))

    def clear(self) -> None:
        """Remove everything in the directory (a failed run being replaced), keeping the directory itself."""
        for item in self.path.iterdir():
            if item.name == self.LOCK:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()


class Status:
    """Writes a run's status.json: every change of state at once, and a heartbeat from a daemon thread
    every HEARTBEAT_SECONDS while the process lives. As an event listener it keeps the phase and the step."""

    def __init__(self, run_dir: RunDir, interval: float = HEARTBEAT_SECONDS):
        self.run_dir, self.interval = run_dir, interval
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        now = time.time()
        pid = os.getpid()
        self.record: dict[str, Any] = {
            "v": SCHEMA, "state": CREATED, "pid": pid, "host": socket.gethostname(),
            "process_start": process_start(pid), "started_at": now, "updated_at": now, "heartbeat_at": now,
            "finished_at": None, "phase": None, "step": None, "max_steps": None, "error": None}

    def begin(self, **extra: Any) -> Status:
        """Write the first record (state created) and start the heartbeat."""
        self.record.update(extra)
        self._write()
        self.thread = threading.Thread(target=self._beat, name="tunelab-heartbeat", daemon=True)
        self.thread.start()
        return self

    def set(self, **changes: Any) -> None:
        with self.lock:
            self.record.update(changes, updated_at=time.time())
        if "state" in changes:
            self._write()

    def end(self, state: str, error: dict[str, str] | None = None) -> None:
        """The final record; the heartbeat stops first, so nothing writes after it."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        now = time.time()
        self.set(state=state, error=error, finished_at=now, heartbeat_at=now)

    def __call__(self, event: Event) -> None:
        if event.kind in ("phase", "evaluating"):
            self.set(phase=event.message)
        elif event.kind in ("step", "train_started"):
            self.set(step=event.fields.get("step", event.fields.get("start_step")),
                     max_steps=event.fields.get("max_steps"))

    def _write(self) -> None:
        with self.lock:
            write_json(self.run_dir / RunDir.STATUS, self.record)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                self.record["heartbeat_at"] = time.time()
            self._write()
