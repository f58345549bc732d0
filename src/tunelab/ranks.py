"""Which process this is, on a run launched on several (torchrun and `accelerate launch` set these variables),
and the few collective calls a run needs (a barrier, a value or an outcome from the main process).

The run's writers ask `is_main_process()`: files and events come from one process, whatever the world size.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    """Processes in the run, all nodes together."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes the run's files and emits its events (rank 0, or a run without ranks)."""
    return rank() == 0


def group_ready() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def barrier() -> None:
    import torch.distributed as dist

    if group_ready():
        dist.barrier()


def from_main(value: Any) -> Any:
    """The main process's value on every rank (e.g. the run directory, chosen from the clock)."""
    import torch.distributed as dist

    if not group_ready():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Any) -> Any:
    """`work()` run on the main process only, its result (or its error, raised again) on every rank: choosing the
    run directory and checking it may be resumed read and remove files, which one process must do."""
    if not group_ready():
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main_process():
        try:
            outcome = ("ok", work())
        except Exception as err:  # every rank stops with the main process's error, none waits forever
            outcome = ("error", err)
    kind, value = from_main(outcome)
    if kind == "error":
        raise value
    return value
