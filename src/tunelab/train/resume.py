"""Continue an unfinished run: find its directory, check it is the same run, pick its checkpoint.

Trainer restores weights, optimizer, scheduler, RNG states and data order from a checkpoint; this
module decides which checkpoint (the newest whose manifest verifies) and refuses to continue a run
whose config or data changed, or to write into a directory that is not a tunelab run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunConfig, dump_config
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.distributed import adjust_to_world
from tunelab.ranks import world_size
from tunelab.train.checkpoint import latest_complete, read_manifest, step_of
from tunelab.events import Events
from tunelab.rundir import choose_run_dir, metrics_line, read_metrics, write_atomic

RUN_MARKER = "config.yaml"


def find_run_dir(config: RunConfig, resume: bool) -> Path:
    """output_dir if given; with --resume and no output_dir, the newest unfinished runs/<name>-*."""
    if config.output_dir is not None or not resume:
        return choose_run_dir(config)
    base = choose_run_dir(config).parent
    unfinished = sorted(p for p in base.glob(f"{config.name}-*")
                        if (p / RUN_MARKER).is_file() and not (p / "summary.json").exists())
    if not unfinished:
        raise TunelabError(f"--resume: no unfinished run named {config.name} under {base}/; give output_dir=")
    return unfinished[-1]


def prepare_resume(run_dir: Path, config: RunConfig, data: dict[str, Any], resume: bool,
                   events: Events) -> Path | None:
    """The checkpoint to continue from (None: start at step 0), after checking run_dir may be used."""
    if (run_dir / "summary.json").exists():
        raise TunelabError(f"{run_dir}: already holds a finished run; choose another output_dir")
    started = (run_dir / RUN_MARKER).is_file()
    if not started:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TunelabError(f"{run_dir}: exists and is not a tunelab run directory; refusing to write into it")
        if resume:
            raise TunelabError(f"--resume: {run_dir} holds no run to resume")
        return None
    _same_run(run_dir, config, data)
    checkpoint = latest_complete(run_dir / "checkpoints", events)
    step = step_of(checkpoint)
    trim_metrics(run_dir / "metrics.jsonl", step)
    where = f"checkpoint {checkpoint}" if checkpoint else "the start (no complete checkpoint yet)"
    events.emit("resumed", step=step, checkpoint=str(checkpoint) if checkpoint else None,
                message=f"resuming {run_dir} at step {step} from {where}")
    return checkpoint


def _same_run(run_dir: Path, config: RunConfig, data: dict[str, Any]) -> None:
    """A resumed run must be the run that was started: same settings, same data bytes."""
    saved = _flatten(yaml.safe_load((run_dir / RUN_MARKER).read_text(encoding="utf-8")) or {})
    now = _flatten(yaml.safe_load(dump_config(config)))
    changed = [k for k in sorted(set(saved) | set(now)) if k != "output_dir" and saved.get(k) != now.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{run_dir}: holds an unfinished run with other settings ({diffs}); "
                          "resume with the same config, or choose another output_dir")
    try:
        before = json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for split in ("train", "eval"):
        old, new = before.get(split, {}).get("sha256"), data.get(split, {}).get("sha256")
        if old and old != new:
            raise DataError(f"{run_dir}: the {split} data changed since this run started "
                            f"({data[split].get('path')}); resume needs the same data, or choose another output_dir")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics recorded after the checkpoint (they are recomputed), and any half-written line."""
    if not path.is_file():
        return
    kept = [metrics_line(record) for record in read_metrics(path) if record["step"] <= step]
    write_atomic(path, "".join(kept))


def resume_layout(config: Any, checkpoint: Path | None, events: Any) -> Any:
    """The config to resume `checkpoint` with on this world size (see adjust_to_world); says what changed."""
    adjusted, message = adjust_to_world(config, read_manifest(checkpoint) if checkpoint else None, world_size())
    if message:
        events.emit("world_size_changed", message=message)
    return adjusted
