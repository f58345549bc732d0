"""A job's run directory read into the store: its events as OpenAI's job events (steps and validations as
`metrics` events), its checkpoints as usable `ft:...:ckpt-step-N` models, and, when it has succeeded, the
fine-tuned model and the `fine-tune-results` CSV.

The run's events.jsonl is read from the byte offset the job row keeps, and the events and the new offset are
written in one transaction: a server killed between two reads reads nothing twice and misses nothing.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

from tunelab.events import Event
from tunelab.rundir import RunDir, tail_events
from tunelab.serve.store import Store, new_id, now

LEVELS = {"progress": "info", "info": "info", "warning": "warn", "error": "error"}
SKIPPED = ("progress",)  # a counted loop's ticks: a bar's, not a line a person reads in a job's events
CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# What a checkpoint needs to be loaded as a model: everything but the optimizer's and trainer's state.
TRAINER_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "manifest.json", "scaler.pt")


def job_event(event: Event, losses: dict[int, float], folder: Path) -> dict[str, Any] | None:
    """One run event as a job event (None for the ones a job does not show). A step's training loss is the one
    metrics.jsonl logged at that step (the step event carries the loss logged before it); paths on the server
    are said relative to the job's folder."""
    if event.kind in SKIPPED:
        return None
    f = event.fields
    base = {"created_at": int(event.time) or now(), "level": LEVELS.get(event.level, "info")}
    if event.kind == "step":
        loss = losses.get(f.get("step"))
        words = f"Step {f.get('step')}/{f.get('max_steps')}" + \
            (f": training loss={loss:.4f}" if loss is not None else "")
        return {**base, "type": "metrics", "message": words,
                "data": {"step": f.get("step"), "train_loss": loss, "total_steps": f.get("max_steps")}}
    if event.kind == "validation":
        metrics = f.get("metrics") or {}
        return {**base, "type": "metrics", "message": event.message,
                "data": {"step": f.get("step"), "valid_loss": metrics.get("eval_loss"), **metrics}}
    return {**base, "type": "message", "message": (event.message or event.kind).replace(f"{folder}/", "")}


def ingest(store: Store, job: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[Event]]:
    """New run events into the job's events (and checkpoints), with the offset, in one transaction."""
    run = RunDir(folder / "run")
    offset = job["events_offset"]
    if run.events_path.is_file() and run.events_path.stat().st_size < offset:
        offset = 0  # a failed run's directory was replaced: its log starts again
    events, offset = tail_events(run.events_path, offset)
    if not events and offset == job["events_offset"]:
        return job, []
    losses = {r["step"]: r["train_loss"] for r in run.read_metrics() if "train_loss" in r} \
        if any(e.kind == "step" for e in events) else {}
    shown = [e for e in (job_event(ev, losses, folder) for ev in events) if e is not None]
    statements = store.event_statements(job["id"], shown)
    for event in events:
        if event.kind == "checkpoint_saved":
            statements.append(checkpoint_statement(store, job, folder, run, event))
    return store.update_job(job["id"], events_offset=offset, extra=[s for s in statements if s]), events


def checkpoint_statement(store: Store, job: dict[str, Any], folder: Path, run: RunDir, event: Event) -> Any:
    """The checkpoint's model files linked where the run's rotation cannot remove them, and its row."""
    step = int(event.fields["step"])
    kept = folder / "checkpoint-models" / f"step-{step}"
    source = Path(event.fields.get("path") or run.checkpoints_dir / f"checkpoint-{step}")
    if not keep_weights(source, kept):
        return None
    return store.checkpoint_statement({
        "id": new_id("ftckpt"), "job_id": job["id"], "owner": job["owner"], "created_at": now(), "step_number": step,
        "metrics": checkpoint_metrics(run, step), "model": f"{model_name(job)}:ckpt-step-{step}", "path": str(kept)})


def keep_weights(source: Path, target: Path) -> bool:
    """Hard links (copies across disks) of a checkpoint's model files; False when it is already gone."""
    if target.is_dir():
        return True
    if not source.is_dir():
        return False
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for item in source.iterdir():
            if item.is_file() and item.name not in TRAINER_STATE and not item.name.startswith("rng_state"):
                try:
                    os.link(item, partial / item.name)
                except OSError:
                    shutil.copyfile(item, partial / item.name)
    except FileNotFoundError:  # rotated away while being linked
        shutil.rmtree(partial, ignore_errors=True)
        return False
    os.replace(partial, target)
    return True


def checkpoint_metrics(run: RunDir, step: int) -> dict[str, Any]:
    """The last training loss and validation loss recorded at or before the checkpoint's step."""
    found: dict[str, Any] = {"step": step}
    for record in run.read_metrics():
        if record["step"] > step:
            break
        if "train_loss" in record:
            found["train_loss"] = record["train_loss"]
        if "eval_loss" in record:
            found["valid_loss"] = record["eval_loss"]
    return found


def model_name(job: dict[str, Any]) -> str:
    """ft:{base}:{org}:{suffix}:{id}, OpenAI's form (the suffix empty when none was given)."""
    body, spec = job["body"], job["spec"]
    return f"ft:{body['model']}:{spec['org']}:{body.get('user_provided_suffix') or ''}:{spec['short_id']}"


def results_csv(run: RunDir) -> bytes:
    """OpenAI's step metrics file: one row per step that logged a training or validation number."""
    rows: dict[int, dict[str, Any]] = {}
    for record in run.read_metrics():
        row = rows.setdefault(record["step"], {"step": record["step"]})
        if "train_loss" in record:
            row["train_loss"] = record["train_loss"]
        if "eval_loss" in record:
            row["valid_loss"] = record["eval_loss"]
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode("utf-8")


def failure(status: dict[str, Any] | None, log_tail: str) -> dict[str, Any]:
    """The job's `error` from the run's recorded error (or the last line its process printed)."""
    error = (status or {}).get("error") or {}
    kind, message = error.get("type") or "", (error.get("message") or log_tail or "the run stopped").strip()
    code, param = {"DataError": ("invalid_training_file", "training_file"),
                   "LeakageError": ("invalid_validation_file", "validation_file"),
                   "ConfigError": ("invalid_hyperparameters", "method"),
                   "RunAborted": ("training_stopped", None)}.get(kind, ("server_error", None))
    return {"code": code, "message": message.splitlines()[0][:2000] if message else kind, "param": param}


def log_tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
