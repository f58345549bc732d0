"""Load a data file into validated rows for a run, with its fingerprint."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import FORMATS, detect_format, inspect_row, normalize_row, shapes_in_words
from tunelab.data.rows import Problem, Row, read_rows
from tunelab.errors import DataError
from tunelab.paths import feed_file

MAX_SHOWN = 5
DETECT_ROWS = 100
# Other names rows often give a field (as in common instruction data sets); never renamed silently.
SYNONYMS = {"prompt": ("question", "instruction", "query"), "completion": ("answer", "response", "output", "target")}


@dataclass
class Dataset:
    path: Path
    format: str
    rows: list[dict[str, Any]]
    lines: list[int]
    carved: dict[str, Any] = field(default_factory=dict)  # the splits tunelab made to get these rows, by name

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "rows": len(self.rows), "sha256": fingerprint(self.path),
                **({"carved": self.carved} if self.carved else {})}

    def pick(self, indices: list[int]) -> Dataset:
        """These rows (indices into `rows`) with their lines."""
        return Dataset(self.path, self.format, [self.rows[i] for i in indices], [self.lines[i] for i in indices],
                       dict(self.carved))

    def sample(self, n: int, seed: int) -> Dataset:
        """A seeded sample of n rows (all when n >= len), kept in file order with their lines."""
        return self.pick(sorted(random.Random(seed).sample(range(len(self.rows)), min(n, len(self.rows)))))


@dataclass
class Validated:
    """Every record of a file sorted into usable rows (normalised) and problems; nothing is dropped.

    `problems` reject their rows; `warnings` (keys that training ignores) are only listed."""

    path: Path
    format: str
    rows: list[Row]
    problems: list[Problem]
    total: int
    invalid: list[Row]
    warnings: list[Problem] = field(default_factory=list)


@dataclass
class Checked:
    """One record of a file after validation: `row` (normalised) when usable, else its `errors`."""

    line: int
    record: Row | Problem
    row: Row | None
    errors: list[Problem]
    warnings: list[Problem]


def stream_file(path: Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> tuple[str, Iterator[Checked]]:
    """The file's format (detected from its first rows when "auto") and its records, validated one at a
    time as they are read: nothing of the file is held but the rows needed to detect the format."""
    path = Path(path)
    records = iter(read_rows(path, columns))
    head = _first_rows(records, DETECT_ROWS) if fmt == "auto" else []
    if fmt == "auto":
        rows = [r for r in head if isinstance(r, Row)]
        fmt = _detect(path, rows) if rows else "unknown"
    elif fmt not in FORMATS:
        raise DataError(f'{path}: unknown format "{fmt}"; expected one of {"|".join(FORMATS)}')
    return fmt, _checked(path, itertools.chain(head, records), fmt)


def _checked(path: Path, records: Iterator[Row | Problem], fmt: str) -> Iterator[Checked]:
    """Each record validated; a file that held none is an error once it has been read to the end."""
    total = 0
    for record in records:
        total += 1
        yield _check(record, fmt)
    if not total:
        raise DataError(f"{path}: no rows; expected one JSON object per line")


def _check(record: Row | Problem, fmt: str) -> Checked:
    if isinstance(record, Problem):
        return Checked(record.line, record, None, [record], [])
    found = inspect_row(record, fmt)
    errors = [p for p in found if not p.warning]
    row = None if errors else Row(record.line, normalize_row(record.fields, fmt))
    return Checked(record.line, record, row, errors, [p for p in found if p.warning])


def validate_file(path: Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> Validated:
    """Read a file and validate each row as it streams past; a row with a problem is left out of `rows`,
    never lost. Only the valid rows (normalised) are kept: the raw records are dropped as they are checked."""
    path = Path(path)
    fmt, checked = stream_file(path, fmt, columns)
    good, invalid, problems, warnings, total = [], [], [], [], 0
    for item in checked:
        total += 1
        problems.extend(item.errors)
        warnings.extend(item.warnings)
        if item.row is not None:
            good.append(item.row)
        elif isinstance(item.record, Row):
            invalid.append(item.record)
    problems.sort(key=lambda p: p.line)
    return Validated(path, fmt, good, problems, total, invalid, warnings)


def _first_rows(records: Iterator[Row | Problem], n: int) -> list[Row | Problem]:
    """Records read up to the n-th parsable row (what format detection looks at)."""
    head, seen = [], 0
    for record in records:
        head.append(record)
        seen += isinstance(record, Row)
        if seen >= n:
            break
    return head


def load_dataset(path: Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> Dataset:
    """Read and validate every row; any invalid row stops the load with file:line:field for each problem."""
    checked = validate_file(path, fmt, columns)
    if checked.problems:
        raise DataError(_problem_report(checked.path, checked.problems, checked.total))
    return Dataset(checked.path, checked.format, [r.fields for r in checked.rows], [r.line for r in checked.rows])


def _detect(path: Path, rows: list[Row]) -> str:
    """The format most of the first rows have, so one malformed first row does not decide it. Rows whose
    own names for a field (an `answer` column) would make them another shape are not guessed at: the error
    names the mapping."""
    votes = Counter(detect_format(r.fields) for r in rows[:DETECT_ROWS])
    fmt = max((f for f in votes if f), key=lambda f: votes[f], default=None)
    keys = ", ".join(sorted(rows[0].fields)) or "none"
    mapping = _mapping_hint(rows[0].fields, fmt)
    where = f"{path}:{rows[0].line}: {'' if fmt else 'cannot tell the format from '}fields [{keys}]: "
    if mapping:
        raise DataError(
            where + " and ".join(f"no {ours} column" for ours in mapping) +
            f"; map {'it' if len(mapping) == 1 else 'them'} with "
            f"{' '.join(f'data.columns.{ours}={theirs}' for ours, theirs in mapping.items())} "
            f"(tunelab data: {' '.join(f'--column {ours}={theirs}' for ours, theirs in mapping.items())})"
            + (f", or set data.format={fmt} to read them as {fmt} rows" if fmt else ""))
    if fmt is None:
        raise DataError(where + f"expected {shapes_in_words()} (or map yours with data.columns.prompt=YOUR_FIELD)")
    return fmt


def _mapping_hint(fields: dict[str, Any], detected: str | None) -> dict[str, str]:
    """{our field: their column} for common other names (`answer` for completion) when the mapped row is of a
    shape detected before the one found (`prompt`+`answer` reads as prompt-only rows otherwise); else {}."""
    mapping = {ours: next(w for w in words if w in fields) for ours, words in SYNONYMS.items()
               if ours not in fields and any(w in fields for w in words)}
    if not mapping:
        return {}
    rename = {theirs: ours for ours, theirs in mapping.items()}
    renamed = detect_format({rename.get(key, key): value for key, value in fields.items()})
    rank = {name: shape.priority for name, shape in FORMATS.items()}
    better = renamed is not None and (detected is None or rank[renamed] < rank[detected])
    return mapping if better else {}


def _problem_report(path: Path, problems: list[Problem], total: int) -> str:
    shown = [p.render(path) for p in problems[:MAX_SHOWN]]
    more = len(problems) - len(shown)
    tail = f"\n... and {more} more problem(s)" if more else ""
    return ("\n".join(shown) + tail +
            f"\n{len(problems)} problem(s) in {total} row(s); `tunelab data check {path}` lists them all")


def fingerprint(path: Path) -> str:
    """sha256 of the file's bytes (of every file, in order, for a directory)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        feed_file(digest, file)
    return digest.hexdigest()
