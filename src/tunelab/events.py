"""Progress as events: a run calls `emit(type, **fields)`; the CLI, a job worker or a test listens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Listener = Callable[[Event], None]


class Events:
    def __init__(self, listener: Listener | None = None):
        self.listener = listener

    def emit(self, type: str, **fields: Any) -> None:
        if self.listener is not None:
            self.listener({"type": type, "time": time.time(), **fields})
