"""Training token ids as Python lists (each process its own) against a memory-mapped Arrow token table (one copy
in the page cache, mapped by every process): memory per process for the same rows, two processes as two ranks.

    python benchmarks/bench_token_table.py [--rows 20000] [--length 256] [--processes 2]

RSS counts every page a process touches; PSS splits a shared page between the processes that map it, so the
sum of PSS over the processes is what the machine really holds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import tempfile
from pathlib import Path


def memory() -> dict[str, int]:
    """This process's resident and proportional set sizes in bytes (Linux)."""
    found = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key.lower()] = int(rest.split()[0]) * 1024
    return found


def make_rows(n: int, length: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        ids = [rng.randrange(49152) for _ in range(length)]
        yield {"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]}


def rank(kind: str, path: str, n: int, length: int, barrier, results) -> None:
    from tunelab.data.token_table import TokenTable  # imported before measuring, on both sides

    before = memory()
    if kind == "lists":
        rows = list(make_rows(n, length))  # what every rank held before: its own encoded rows
        total = sum(len(r["input_ids"]) for r in rows)
    else:
        rows = TokenTable(Path(path))
        total = sum(int(v.sum() >= 0) * len(v) for chunk in rows._chunks for _, v in chunk.values())  # every page
    barrier.wait()  # all ranks hold their rows at once, as in a run
    after = memory()
    results.put({"kind": kind, "rss": after["rss"] - before["rss"], "pss": after["pss"] - before["pss"],
                 "ids": total})
    barrier.wait()


def measure(kind: str, path: str, n: int, length: int, processes: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=rank, args=(kind, path, n, length, barrier, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    from tunelab.data.token_table import write_token_table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.arrow"
        write_token_table(make_rows(args.rows, args.length), path)
        print(f"{args.rows:,} rows x {args.length} tokens (input_ids and labels), {args.processes} processes; "
              f"Arrow file {path.stat().st_size / 2**20:.1f} MiB")
        print("| rows held as | RSS per process (MiB) | PSS per process (MiB) | machine total (sum of PSS, MiB) |")
        print("|---|---|---|---|")
        for kind in ("lists", "arrow"):
            got = measure(kind, str(path), args.rows, args.length, args.processes)
            rss = max(g["rss"] for g in got) / 2**20
            pss = max(g["pss"] for g in got) / 2**20
            total = sum(g["pss"] for g in got) / 2**20
            name = "Python lists, one copy per process" if kind == "lists" else "memory-mapped Arrow table"
            print(f"| {name} | {rss:,.0f} | {pss:,.0f} | {total:,.0f} |")


if __name__ == "__main__":
    main()
