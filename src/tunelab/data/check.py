"""`tunelab data check`: every row's problems, token statistics, and a rejects file.

A row is rejected when it breaks its schema, when its supervised part would be cut by max_length,
or when it repeats an earlier row exactly or nearly. Kept + rejected always equals rows read.
Keys that training ignores are warnings: listed once per key, at its first row, never rejecting.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.data.dedup import DEFAULT_THRESHOLD, find_duplicates
from tunelab.data.formats import get_format, row_text
from tunelab.data.loading import Validated, validate_file
from tunelab.data.rows import Problem, Row

DEFAULT_MAX_LENGTH = 512


@dataclass
class CheckReport:
    path: Path
    format: str
    total: int
    kept: list[Row]
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
        return {"path": str(self.path), "format": self.format, "rows": self.total, "kept": len(self.kept),
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
    """Validate, measure and deduplicate a file; nothing is dropped without a reason."""
    checked = validate_file(path, fmt, columns)
    problems = list(checked.problems)
    shape = get_format(checked.format)
    lengths = [shape.token_length(r.fields, tokenizer, max_length) for r in checked.rows]
    problems += [Problem(r.line, cut, f"{n} tokens; the supervised part is cut at max_length={max_length}",
                         "too_long") for r, (n, cut) in zip(checked.rows, lengths) if cut]
    problems += duplicate_problems(checked.rows, checked.format, threshold)
    problems.sort(key=lambda p: p.line)
    bad = {p.line for p in problems}
    report = CheckReport(checked.path, checked.format, checked.total, [r for r in checked.rows if r.line not in bad],
                         problems, max_length=max_length)
    report.tokens = [n for n, _ in lengths]
    if shape.label_field:
        report.labels = Counter(r.fields[shape.label_field] for r in checked.rows)
    report.rejected = reject_entries(checked, problems)
    report.warnings, report.ignored_keys = once_per_key(checked.warnings)
    return report


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


def duplicate_problems(rows: list[Row], fmt: str, threshold: float) -> list[Problem]:
    twins = find_duplicates([row_text(r.fields, fmt) for r in rows], threshold)
    return [Problem(rows[t.dropped].line, "", f"exact duplicate of line {rows[t.kept].line}", "duplicate")
            if t.kind == "exact" else
            Problem(rows[t.dropped].line, "", f"near-duplicate of line {rows[t.kept].line} "
                    f"(Jaccard {t.similarity:.2f} >= {threshold})", "near_duplicate") for t in twins]


def reject_entries(checked: Validated, problems: list[Problem]) -> dict[int, dict[str, Any]]:
    """One rejects-file record per problem line: its reasons and the row (or the raw line) as read."""
    fields = {r.line: r.fields for r in [*checked.rows, *checked.invalid]}
    out: dict[int, dict[str, Any]] = {}
    for p in problems:
        entry = out.setdefault(p.line, {"line": p.line, "reasons": []})
        entry["reasons"].append(p.render(checked.path).split(": ", 1)[1])
        if p.line in fields:
            entry["row"] = fields[p.line]
        elif p.raw is not None:
            entry["raw"] = p.raw
    return out


def write_rejects(report: CheckReport, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        for line in sorted(report.rejected):
            handle.write(json.dumps(report.rejected[line], ensure_ascii=False) + "\n")


def load_tokenizer(model: str) -> Any:
    """Only the tokenizer of a bundled alias or local checkpoint (no weights are loaded)."""
    from transformers import AutoTokenizer

    from tunelab.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))
