"""Atomic checkpoints: a checkpoint counts only once its manifest of file hashes is written, last.

Trainer writes `checkpoint-N/` (weights, optimizer, scheduler, RNG states, trainer_state.json) in place.
`CheckpointKeeper.on_save` then fsyncs every file, hashes it, and writes `manifest.json` atomically
(temp file, fsync, rename, fsync of the directory). A process killed at any moment before that rename
leaves a directory without a manifest, which resume never picks up; a file changed or truncated later
fails its hash. The keeper also rotates: the last K complete checkpoints and the best one are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.paths import feed_file, inside
from tunelab.events import Events
from tunelab.rundir import read_metrics, write_json
from tunelab.distributed import layout
from tunelab.ranks import barrier, is_main_process

MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Trainer pickles its whole TrainingArguments here; nothing reads it back and unpickling it would need
# weights_only=False, so it is removed before the manifest is written (config.yaml holds the settings).
_UNSAFE_EXTRAS = ("training_args.bin",)


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """checkpoint-N directories directly under root, oldest first; symlinks are never followed."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append((int(match.group(1)), path))
    return sorted(found)


def step_of(checkpoint: Path | None) -> int:
    """The global step a checkpoint was written at; 0 for none (the start)."""
    return int(_NAME.match(checkpoint.name).group(1)) if checkpoint else 0


def _sha256(path: Path) -> str:
    return feed_file(hashlib.sha256(), path).hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Seal a fully written checkpoint: fsync and hash every file, then write the manifest last."""
    for name in _UNSAFE_EXTRAS:
        (directory / name).unlink(missing_ok=True)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        _fsync_file(path)  # the bytes hashed are the bytes on disk before the manifest exists
        files[path.relative_to(directory).as_posix()] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    for sub in sorted({p.parent for p in directory.rglob("*")} | {directory}):
        _fsync_dir(sub)
    write_json(directory / MANIFEST, {**info, "files": files})
    _fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("files"), dict) else None


def problem(directory: Path) -> str | None:
    """Why a checkpoint cannot be used (no manifest, missing or changed file), or None if it verifies."""
    manifest = read_manifest(directory)
    if manifest is None:
        return "no manifest (it was not completely written)"
    if not manifest["files"]:
        return "manifest lists no files"
    if manifest.get("resumable") is False:
        return "it holds weights only (kept when its run finished), not the state to resume from"
    for name, entry in manifest["files"].items():
        path = inside(directory, name)
        if path is None or not path.is_file():
            return f'file "{name}" is missing or escapes the checkpoint'
        if not isinstance(entry, dict) or _sha256(path) != entry.get("sha256"):
            return f'file "{name}" does not match its recorded sha256'
    return None


def latest_complete(root: Path, events: Events | None = None) -> Path | None:
    """The newest checkpoint whose manifest verifies; newer broken ones are reported and removed, so that
    Trainer never writes into a half-written directory again."""
    for _, path in reversed(checkpoint_dirs(root)):
        why = problem(path)
        if why is None:
            return path
        if events is not None:
            events.emit("warning", message=f"{path}: removed an unusable checkpoint: {why}")
        shutil.rmtree(path, ignore_errors=True)
    return None


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the last `keep_last` sealed checkpoints and the best one (by the run's best_metric)."""
    sealed = [(step, path, read_manifest(path)) for step, path in checkpoint_dirs(root)]
    sealed = [(step, path, m) for step, path, m in sealed if m is not None]
    keep = {path for _, path, _ in sealed[-keep_last:]}
    scored = [((-1 if m.get("higher_is_better") else 1) * m["value"], step, path)
              for step, path, m in sealed if m.get("value") is not None]
    if scored:
        keep.add(min(scored)[2])
    removed = [path for _, path, _ in sealed if path not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# What Trainer pickles into a checkpoint to resume from it (optimizer, schedule, random states): needed only
# while the run is unfinished.
_RESUME_STATE = (".pt", ".pth", ".bin")


def keep_weights_only(root: Path) -> list[Path]:
    """Once a run has finished, nothing resumes it: strip each sealed checkpoint to its weights (safetensors) and
    JSON, resealed with `resumable: false`, so the finished run directory holds no pickle. Returns the files removed."""
    removed = []
    for _, path in checkpoint_dirs(root):
        manifest = read_manifest(path)
        if manifest is None:
            continue
        state = [p for p in path.rglob("*") if p.is_file() and p.suffix in _RESUME_STATE]
        for file in state:
            file.unlink()
        removed += state
        write_manifest(path, {**{k: v for k, v in manifest.items() if k != "files"}, "resumable": False})
    return removed


def metric_at(metrics_path: Path, step: int, metric: str) -> float | None:
    """The validation metric recorded in metrics.jsonl at exactly this step, if validation ran there."""
    found = [float(r[metric]) for r in read_metrics(metrics_path) if r["step"] == step and metric in r]
    return found[-1] if found else None


class CheckpointKeeper(TrainerCallback):
    """Seals each checkpoint Trainer writes with a manifest, then rotates (Trainer's own rotation is off)."""

    def __init__(self, root: Path, keep_last: int, metrics_path: Path, events: Events,
                 best: tuple[str, bool] = ("eval_loss", False)):
        self.root, self.keep_last = root, keep_last
        self.metrics_path, self.events = metrics_path, events
        self.metric, self.higher_is_better = best

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the guards before this one have had their say: the save will happen
            self.events.emit("saving_checkpoint", step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank has written its part (its RNG state, its shard) before the main process seals them
        if not is_main_process():
            return
        directory = self.root / f"checkpoint-{state.global_step}"
        value = metric_at(self.metrics_path, state.global_step, self.metric)
        write_manifest(directory, {"step": state.global_step, "best_metric": self.metric, "value": value,
                                   "higher_is_better": self.higher_is_better, **layout(args)})
        prune(self.root, self.keep_last)
        self.events.emit("checkpoint_saved", step=state.global_step, path=str(directory))


class SaveAtEnd(TrainerCallback):
    """A checkpoint when training ends (the last step, or early stopping), when checkpoints are on: a run
    interrupted in the evaluation after training then resumes there instead of training again."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def on_step_end(self, args, state, control, **kwargs):
        if self.enabled and (control.should_training_stop or state.global_step >= state.max_steps):
            control.should_save = True
