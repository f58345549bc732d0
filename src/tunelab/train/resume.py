"""Which directory a run writes to, and what is already there: a run to continue, a failed run to replace,
or something that must not be touched.

Trainer restores weights, optimizer, scheduler, RNG states and data order from a checkpoint; this module
decides which checkpoint (the newest whose manifest verifies), continues only the run that was started
(same settings, same data), replaces a run recorded as failed when the command changed, and refuses a
finished run, a run whose process is alive, and a directory that is not a tunelab run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunConfig, dump_config
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.distributed import adjust_to_world
from tunelab.ranks import world_size
from tunelab.events import Events
from tunelab.rundir import DEAD, FAILED, INTERRUPTED, LIVE, SUCCEEDED, RunDir, choose_run_dir
from tunelab.train.checkpoint import latest_complete, read_manifest, step_of

RESUMABLE = (INTERRUPTED, DEAD, FAILED)


def find_run_dir(config: RunConfig, resume: bool) -> RunDir:
    """output_dir if given; with --resume and no output_dir, the newest unfinished runs/<name>-*."""
    if config.output_dir is not None or not resume:
        return RunDir(choose_run_dir(config))
    base = choose_run_dir(config).parent
    unfinished = [d for d in _named(base, config.name) if d.has_config() and d.state() in RESUMABLE]
    if not unfinished:
        raise TunelabError(f"--resume: no unfinished run named {config.name} under {base}/; give output_dir=")
    return unfinished[-1]


def _named(base: Path, name: str) -> list[RunDir]:
    return [RunDir(p) for p in sorted(base.glob(f"{name}-*")) if p.is_dir()]


def unfinished_like(config: RunConfig, data: dict[str, Any]) -> RunDir | None:
    """With the default output_dir, the newest unfinished runs/<name>-* of exactly this config and data, which
    `--resume` would continue (a new run is started; the caller says so)."""
    if config.output_dir is not None:
        return None
    found = [d for d in _named(choose_run_dir(config).parent, config.name)
             if d.has_config() and d.state() in (INTERRUPTED, DEAD) and not differences(d, config, data)]
    return found[-1] if found else None


def prepare_resume(run_dir: RunDir, config: RunConfig, data: dict[str, Any], resume: bool,
                   events: Events) -> Path | None:
    """Check that run_dir may be written, replace a failed run the command changed, and return the checkpoint
    to continue from (None: start at step 0)."""
    state = run_dir.state()
    if state is None:
        refuse_foreign(run_dir)
        if resume:
            raise TunelabError(f"--resume: {run_dir} holds no run to resume")
        return None
    refuse_unusable(run_dir, state)
    changed = differences(run_dir, config, data)
    if resume and not run_dir.has_config():
        raise TunelabError(f"--resume: {run_dir} holds no run to resume (it failed before it began)")
    if state == FAILED and not resume and (changed or not run_dir.has_config()):
        error = (run_dir.read_status() or {}).get("error") or {}
        run_dir.clear()
        events.emit("run_replaced", run_dir=str(run_dir), error=error.get("message"),
                    message=f"{run_dir}: replacing the failed run there (it failed: {_first_line(error)}) with "
                            "this command's settings")
        return None
    if changed:
        raise changed[0]
    checkpoint = latest_complete(run_dir.checkpoints_dir, events)
    step = step_of(checkpoint)
    run_dir.trim_metrics(step)
    where = f"checkpoint {checkpoint}" if checkpoint else "the start (no complete checkpoint yet)"
    events.emit("resumed", step=step, checkpoint=str(checkpoint) if checkpoint else None,
                message=f"resuming {run_dir} at step {step} from {where} (the run was {state})")
    return checkpoint


def refuse_foreign(run_dir: RunDir) -> None:
    """A directory with files that is not a run is the user's: nothing is written into it, not even a lock."""
    if run_dir.state() is None and not run_dir.is_empty():
        raise TunelabError(f"{run_dir}: exists and is not a tunelab run directory; refusing to write into it")


def refuse_unusable(run_dir: RunDir, state: str) -> None:
    """A finished run is kept; a run whose process is alive is that process's."""
    if state == SUCCEEDED:
        raise TunelabError(f"{run_dir}: already holds a finished run; choose another output_dir")
    if state in LIVE:
        status = run_dir.read_status() or {}
        raise TunelabError(f"{run_dir}: a run is in progress there (pid {status.get('pid')} on {status.get('host')}, "
                           f"{status.get('phase') or state}); wait for it, stop it, or choose another output_dir")


def _first_line(error: dict[str, Any]) -> str:
    return str(error.get("message") or "unknown error").splitlines()[0]


def differences(run_dir: RunDir, config: RunConfig, data: dict[str, Any]) -> list[TunelabError]:
    """Why `run_dir` does not hold this run: other settings, or other data bytes ([] when it does)."""
    if not run_dir.has_config():
        return []
    saved = _flatten(run_dir.read_config())
    now = _flatten(yaml.safe_load(dump_config(config)))
    changed = [k for k in sorted(set(saved) | set(now)) if k != "output_dir" and saved.get(k) != now.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        return [ConfigError(f"{run_dir}: holds an unfinished run with other settings ({diffs}); "
                            "resume with the same config, or choose another output_dir")]
    before = run_dir.read_data_info()
    for split in ("train", "eval"):
        old, new = before.get(split, {}).get("sha256"), data.get(split, {}).get("sha256")
        if old and old != new:
            return [DataError(f"{run_dir}: the {split} data changed since this run started "
                              f"({data[split].get('path')}); resume needs the same data, or choose another output_dir")]
    return []


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def resume_layout(config: Any, checkpoint: Path | None, events: Any) -> Any:
    """The config to resume `checkpoint` with on this world size (see adjust_to_world); says what changed."""
    adjusted, message = adjust_to_world(config, read_manifest(checkpoint) if checkpoint else None, world_size())
    if message:
        events.emit("world_size_changed", message=message)
    return adjusted
