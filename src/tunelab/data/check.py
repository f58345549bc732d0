"""`tunelab data check`: every row's problems, token statistics, and a rejects file.

A row is rejected when it breaks its schema, when its supervised part would be cut by max_length,
or when it repeats an earlier row exactly or nearly. Kept + rejected always equals rows read.
Keys that training ignores are warnings: listed once per key, at its first row, never rejecting.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.data.dedup import DEFAULT_THRESHOLD, Deduplicator, Twin
from tunelab.data.formats import FORMATS, row_text
from tunelab.data.loading import stream_file
from tunelab.data.rows import Problem, Row
from tunelab.data.spill import RowFile

DEFAULT_MAX_LENGTH = 512


@dataclass
class CheckReport:
    path: Path
    format: str
    total: int
    kept: int  # rows without a problem
    problems: list[Problem]
    rejected: dict[int, dict[str, Any]] = field(default_factory=dict)  # line -> {"row"|"raw", "reasons"}
    tokens: list[int] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    max_length: int = DEFAULT_MAX_LENGTH
    warnings: list[Problem] = field(default_factory=list)
    ignored_keys: Counter = field(default_factory=Counter)  # key ("messages[].name") -> rows that carry it

    def kinds(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def token_stats(self) -> dict[str, float]:
        return describe_lengths(self.tokens)

    def summary(self) -> dict[str, Any]:
        kinds = self.kinds()
        return {"path": str(self.path), "format": self.format, "rows": self.total, "kept": self.kept,
                "rejected": len(self.rejected), "problems_by_kind": dict(kinds), "tokens": self.token_stats(),
                "over_max_length": kinds["too_long"], "max_length": self.max_length,
                "labels": dict(self.labels), "exact_duplicates": kinds["duplicate"],
                "near_duplicates": kinds["near_duplicate"], "empty_targets": kinds["empty"],
                "non_utf8": kinds["encoding"], "ignored_keys": dict(self.ignored_keys)}


def describe_lengths(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def check_file(path: Path, tokenizer: Any, fmt: str = "auto", columns: dict[str, str] | None = None,
               max_length: int = DEFAULT_MAX_LENGTH, threshold: float = DEFAULT_THRESHOLD) -> CheckReport:
    """Validate, measure and deduplicate a file; nothing is dropped without a reason.

    One pass reads the file (valid rows are spilled to a temporary file), the deduplicator reads the
    spill again: memory holds a few numbers per row and the problems found, never the rows."""
    fmt, records = stream_file(path, fmt, columns)
    shape = FORMATS.get(fmt)  # None when no line parses: then no row is valid and none is measured
    report = CheckReport(Path(path), fmt, 0, 0, [], max_length=max_length)
    invalid: dict[int, dict[str, Any]] = {}  # line -> fields, for records that broke their schema
    lines, warnings = array("q"), []
    finder = Deduplicator(threshold)
    with tempfile.TemporaryDirectory(prefix="tunelab-check-") as spill:
        rows = RowFile(Path(spill) / "rows.jsonl")
        try:
            for item in records:
                report.total += 1
                report.problems.extend(item.errors)
                warnings.extend(item.warnings)
                if item.row is None:
                    if isinstance(item.record, Row):
                        invalid[item.line] = item.record.fields
                    continue
                report.problems.extend(_measure(item.row, shape, tokenizer, max_length, report))
                lines.append(item.line)
                rows.append(item.row.fields)
                finder.see(row_text(item.row.fields, fmt))
            report.problems += duplicate_problems(finder.twins(rows.texts(lambda f: row_text(f, fmt))), lines,
                                                  threshold)
            report.problems.sort(key=lambda p: p.line)
            report.rejected = reject_entries(report.path, report.problems, _fields_at(lines, rows, invalid))
        finally:
            rows.close()
    report.kept = report.total - len(report.rejected)
    report.warnings, report.ignored_keys = once_per_key(warnings)
    return report


def _measure(row: Row, shape: Any, tokenizer: Any, max_length: int, report: CheckReport) -> list[Problem]:
    """Count the row's tokens and label into the report; the row's problem when max_length cuts it."""
    n, cut = shape.token_length(row.fields, tokenizer, max_length)
    report.tokens.append(n)
    if shape.label_field:
        report.labels[row.fields[shape.label_field]] += 1
    return [Problem(row.line, cut, f"{n} tokens; the supervised part is cut at max_length={max_length}",
                    "too_long")] if cut else []


def _fields_at(lines: array, rows: RowFile, invalid: dict[int, dict[str, Any]]) -> Callable[[int], Any]:
    """The row at a line as read: a valid row from the spill file (lines ascend), else the invalid record."""
    def fields(line: int) -> dict[str, Any] | None:
        at = bisect.bisect_left(lines, line)
        return rows[at] if at < len(lines) and lines[at] == line else invalid.get(line)

    return fields


def once_per_key(warnings: list[Problem]) -> tuple[list[Problem], Counter]:
    """Each ignored key's first warning, with how many rows carry the key: an `id` column is one fact."""
    first: dict[str, Problem] = {}
    lines: dict[str, set[int]] = {}
    for p in warnings:
        key = re.sub(r"\[\d+\]", "[]", p.field)
        first.setdefault(key, p)
        lines.setdefault(key, set()).add(p.line)
    rows = Counter({key: len(found) for key, found in lines.items()})
    return [replace(p, message=f"{p.message} ({rows[key]} rows carry it; the first is here)") if rows[key] > 1 else p
            for key, p in first.items()], rows


def duplicate_problems(twins: list[Twin], lines: Sequence[int], threshold: float) -> list[Problem]:
    """A problem per dropped twin, at its line, naming the line of the row it repeats."""
    return [Problem(lines[t.dropped], "", f"exact duplicate of line {lines[t.kept]}", "duplicate")
            if t.kind == "exact" else
            Problem(lines[t.dropped], "", f"near-duplicate of line {lines[t.kept]} "
                    f"(Jaccard {t.similarity:.2f} >= {threshold})", "near_duplicate") for t in twins]


def reject_entries(path: Path, problems: list[Problem], fields_at: Callable[[int], Any]) -> dict[int, dict[str, Any]]:
    """One rejects-file record per problem line: its reasons and the row (or the raw line) as read."""
    out: dict[int, dict[str, Any]] = {}
    for p in problems:
        entry = out.setdefault(p.line, {"line": p.line, "reasons": []})
        entry["reasons"].append(p.render(path).split(": ", 1)[1])
        if "row" in entry or "raw" in entry:
            continue
        fields = fields_at(p.line)
        if fields is not None:
            entry["row"] = fields
        elif p.raw is not None:
            entry["raw"] = p.raw
    return out


def write_rejects(report: CheckReport, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        for line in sorted(report.rejected):
            handle.write(json.dumps(report.rejected[line], ensure_ascii=False) + "\n")


def load_tokenizer(model: str) -> Any:
    """Only the tokenizer of a bundled alias or local checkpoint (no weights are loaded), through the one loader."""
    from tunelab.models import resolve_model
    from tunelab.models.loading import load_tokenizer as load

    return load(resolve_model(model))
