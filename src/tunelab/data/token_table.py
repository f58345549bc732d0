"""A run's training token ids in a memory-mapped Arrow file instead of Python lists.

A Python list of token ids costs about 36 bytes per id (an 8-byte pointer and, past 256, a 28-byte int object),
and every process of a run held its own copy. Here the main process encodes the rows once and writes them as
int32 Arrow lists (4 bytes per id); every process maps the same file, so the operating system keeps one copy in
its page cache for all of them (benchmarks/bench_token_table.py measures both).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tunelab.ranks import barrier, on_main

COLUMNS = ("input_ids", "labels")
_SCRATCH: ContextVar[Path | None] = ContextVar("tunelab_token_scratch", default=None)
BATCH = 4096  # rows per Arrow record batch: writing never holds more than this many encoded rows


@contextmanager
def scratch(directory: Path) -> Iterator[None]:
    """Where `token_rows` writes while a run prepares its data (its run directory): one place every rank sees."""
    token = _SCRATCH.set(Path(directory))
    try:
        yield
    finally:
        _SCRATCH.reset(token)


def write_token_table(rows: Iterable[dict[str, Sequence[int]]], path: Path) -> int:
    """Stream rows of input_ids/labels into an Arrow IPC file (written beside, then renamed); the row count."""
    schema = pa.schema([(name, pa.list_(pa.int32())) for name in COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, count, batch = path.with_suffix(".partial"), 0, []
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                count += _flush(writer, schema, batch)
        count += _flush(writer, schema, batch)
    partial.replace(path)
    return count


def _flush(writer: Any, schema: pa.Schema, batch: list[dict[str, Sequence[int]]]) -> int:
    if not batch:
        return 0
    arrays = [pa.array([list(r[name]) for r in batch], type=pa.list_(pa.int32())) for name in COLUMNS]
    writer.write_batch(pa.record_batch(arrays, schema=schema))
    n = len(batch)
    batch.clear()
    return n


class TokenTable(Sequence):
    """Rows of a token table, read from the memory map on demand (offsets and values as numpy views)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        # one record batch at a time, zero-copy: combining the chunks would copy the file into memory
        self._chunks = []
        for k in range(reader.num_record_batches):
            batch = reader.get_batch(k)
            self._chunks.append({name: (batch.column(name).offsets.to_numpy(),
                                        batch.column(name).values.to_numpy(zero_copy_only=True)) for name in COLUMNS})
        self._starts = np.cumsum([0] + [len(c["input_ids"][0]) - 1 for c in self._chunks])
        self._length = int(self._starts[-1])

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._length))]
        if not -self._length <= i < self._length:
            raise IndexError(i)
        i %= self._length
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        row = i - int(self._starts[k])
        return {name: values[offsets[row]:offsets[row + 1]].tolist()
                for name, (offsets, values) in self._chunks[k].items()}

    def nbytes(self) -> int:
        return sum(int(o.nbytes + v.nbytes) for chunk in self._chunks for o, v in chunk.values())


def token_rows(encode: Any) -> Sequence[dict[str, list[int]]]:
    """The rows `encode()` yields, as a TokenTable mapped by every rank when a run set a scratch directory (the
    main process encodes and writes; an error there stops every rank); else the rows as a plain list."""
    where = _SCRATCH.get()
    if where is None:
        return list(encode())
    path = where / "tokens" / "train.arrow"
    on_main(lambda: write_token_table(encode(), path))
    table = TokenTable(path)
    barrier()  # every rank holds its map before the name goes: the file lives until the last map closes
    on_main(lambda: (path.unlink(missing_ok=True), path.parent.rmdir()))
    return table
