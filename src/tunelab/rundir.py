"""The run directory: the unit everything else reads. Every file is written atomically."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.ranks import is_main_process

TRACKED = ("tunelab", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors")


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


def write_run_header(run_dir: Path, config_yaml: str, data: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", config_yaml)
    write_json(run_dir / "versions.json", versions())
    write_json(run_dir / "data.json", data)


def metrics_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as training goes."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(metrics_line(record))
            handle.flush()


def write_samples(run_dir: Path, before: list[dict[str, Any]], after: list[dict[str, Any]],
                  baselines: dict[str, list[dict[str, Any]]]) -> None:
    """samples.jsonl: one line per held-out row; the answers are matched on the row's line, never on position."""
    tuned = {s["line"]: s["output"] for s in after}
    others = {name: {s["line"]: s["output"] for s in samples} for name, samples in baselines.items()}
    lines = [json.dumps({"line": b["line"], "prompt": b["prompt"], "reference": b["reference"], "before": b["output"],
                         **{name: outs.get(b["line"]) for name, outs in others.items()}, "after": tuned[b["line"]]})
             for b in before]
    write_atomic(run_dir / "samples.jsonl", "".join(line + "\n" for line in lines))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl ([] when there is none yet).

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
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif number < len(lines):
            raise TunelabError(f'{path}:{number}: expected a JSON object with an integer "step", got {line[:80]!r}')
    return records
