"""Which process this is, on a run launched on several (torchrun and `accelerate launch` set these variables).

The run's writers ask `is_main_process()`: files and events come from one process, whatever the world size.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes in the run, all nodes together."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes the run's files and emits its events (rank 0, or a run without ranks)."""
    return rank() == 0
