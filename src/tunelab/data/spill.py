"""A JSONL file of rows written once and read back in order or by position, so a pass over a large
data file holds a byte offset per row instead of the row."""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class RowFile:
    """Rows appended to `path` (removed by `close`); `texts(view)` reads them back as a sequence of
    view(fields) that can be iterated again and indexed, which is what `Deduplicator.twins` needs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offsets = array("q")
        self._out = open(self.path, "wb")
        self._in: Any = None

    def append(self, fields: dict[str, Any]) -> None:
        self.offsets.append(self._out.tell())
        self._out.write((json.dumps(fields, ensure_ascii=False) + "\n").encode("utf-8"))

    def __len__(self) -> int:
        return len(self.offsets)

    def lines(self) -> Iterator[bytes]:
        """Each row's JSON line (with its newline), in order."""
        self._out.flush()
        with open(self.path, "rb") as handle:
            yield from handle

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._out.flush()
        if self._in is None:
            self._in = open(self.path, "rb")
        self._in.seek(self.offsets[i])
        return json.loads(self._in.readline())

    def texts(self, view: Callable[[dict[str, Any]], str]) -> _Texts:
        return _Texts(self, view)

    def close(self) -> None:
        for handle in (self._out, self._in):
            if handle is not None:
                handle.close()
        if self.path.exists():
            os.unlink(self.path)


class _Texts:
    def __init__(self, rows: RowFile, view: Callable[[dict[str, Any]], str]):
        self.rows, self.view = rows, view

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[str]:
        return (self.view(json.loads(line)) for line in self.rows.lines())

    def __getitem__(self, i: int) -> str:
        return self.view(self.rows[i])
