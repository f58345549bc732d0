"""What an answer costs: prompt and generated tokens, seconds per answer (batched, and one at a time as a
service answers a lone request), and the peak memory while answering.

A prompting baseline pays for its demos on every request; a tuned model answers from the bare prompt. These
numbers, for every column of a run, are what the verdict weighs against the tuning time (`eval.cost`).
Timing is wall-clock on whatever else the machine runs: it is reported, never a pass/fail criterion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

SAMPLE_SECONDS = 0.02  # how often resident memory is read while answering on a CPU


class PeakMemory:
    """The most memory held while the block runs: on CUDA the allocator's peak, else this process's resident
    set, read by a thread every SAMPLE_SECONDS (the process's lifetime peak, ru_maxrss, cannot be reset)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._done = threading.Event()

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self.bytes = process.memory_info().rss

        def watch() -> None:
            while not self._done.wait(SAMPLE_SECONDS):
                self.bytes = max(self.bytes, process.memory_info().rss)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            self.bytes = int(torch.cuda.max_memory_allocated())
            return
        self._done.set()
        self._thread.join()


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Seconds the block took, in the one-item list it yields (read after the block)."""
    took = [0.0]
    started = time.perf_counter()
    try:
        yield took
    finally:
        took[0] = time.perf_counter() - started


def answer_cost(prompt_lengths: list[int], generated: list[int], batched_seconds: float, peak_bytes: int,
                one_at_a_time: tuple[int, float] | None) -> dict[str, Any]:
    """A column's cost per answer: means of its prompt and generated tokens, seconds per answer batched and (when
    timed, over `one_at_a_time`'s (answers, seconds)) one at a time, and the peak memory while answering."""
    n = max(len(prompt_lengths), 1)
    cost = {"answers": len(prompt_lengths), "prompt_tokens": sum(prompt_lengths) / n,
            "generated_tokens": sum(generated) / n, "seconds_batched": batched_seconds / n,
            "peak_memory_bytes": int(peak_bytes)}
    if one_at_a_time is not None and one_at_a_time[0]:
        cost.update(timed_one_at_a_time=one_at_a_time[0], seconds_one=one_at_a_time[1] / one_at_a_time[0])
    return cost
