"""Two CPU processes (gloo) running one function each, as ranks 0 and 1 of a group on a free loopback port:
what every rank put on the results queue, by rank."""

from __future__ import annotations

import socket
from typing import Any, Callable


def run_two_ranks(target: Callable[..., None], *args: Any, timeout: float = 300) -> dict[int, Any]:
    """`target(rank, port, *args, results)` in two spawned processes; each puts `(rank, value)` on `results`."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, port, *args, results)) for rank in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return got
