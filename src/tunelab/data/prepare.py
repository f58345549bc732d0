"""`tunelab data prepare`: validate, clean, bound lengths, deduplicate, split, and say what was done.

Every input row ends in exactly one place: a split or rejects.jsonl (with its reasons, in input order;
a dropped duplicate names the line it repeats, as `data check` does, and prepare_report.json lists each
cluster), so kept + rejected = rows read. The output directory must be new or empty; the files are
made in a hidden folder beside it and moved in at the end, so a failed prepare leaves nothing behind.
"""

from __future__ import annotations

import heapq
import json
import shutil
import tempfile
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.check import describe_lengths, duplicate_problems, reject_entries
from tunelab.data.clean import clean_row
from tunelab.data.dedup import DEFAULT_THRESHOLD, Deduplicator, Twin, clusters
from tunelab.data.formats import FORMATS, get_format, row_text, validate_row
from tunelab.data.loading import Checked, fingerprint, stream_file
from tunelab.data.rows import Row
from tunelab.data.spill import RowFile
from tunelab.data.split import SPLITS, assign_splits
from tunelab.errors import ConfigError

INVALID = ".rejects-first-pass.jsonl"  # the first pass's rejects, merged with the duplicates into rejects.jsonl


@dataclass
class PrepareOptions:
    fmt: str = "auto"
    columns: dict[str, str] | None = None
    max_length: int = 512
    min_tokens: int = 1
    threshold: float = DEFAULT_THRESHOLD
    shares: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    drop_near: bool = True


def prepare(path: Path, out_dir: Path, tokenizer: Any, options: PrepareOptions) -> dict[str, Any]:
    """Two passes over the file, holding a few numbers per row: the first validates, cleans, measures and
    rejects each row as it is read and appends the usable ones to a spill file; the deduplicator reads
    that file again, and the second pass copies each kept row into its split."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: not empty (an earlier prepare?); give -o a new or empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    rows = RowFile(work / ".prepare-rows.jsonl")
    try:
        seen = _first_pass(path, work, rows, tokenizer, options)
        twins = seen.finder.twins(rows.texts(lambda fields: row_text(fields, seen.fmt)))
        report = _split_and_report(path, work, rows, seen, twins, options)
        rows.close()
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        work.rename(out_dir)
        return report
    finally:
        rows.close()
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Seen:
    """What the first pass keeps: per usable row its line, token count and label id (numbers), and totals."""

    fmt: str
    finder: Deduplicator
    label_field: str | None
    lines: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("q"))
    labels: array = field(default_factory=lambda: array("q"))
    label_ids: dict[str, int] = field(default_factory=dict)  # repr(label) -> id
    label_values: list[Any] = field(default_factory=list)  # id -> label
    total: int = 0
    rejected: int = 0
    cleaned: int = 0

    def add(self, line: int, fields: dict[str, Any], n_tokens: int) -> None:
        self.lines.append(line)
        self.lengths.append(n_tokens)
        self.finder.see(row_text(fields, self.fmt))
        if self.label_field:
            value = fields[self.label_field]
            if repr(value) not in self.label_ids:
                self.label_ids[repr(value)] = len(self.label_values)
                self.label_values.append(value)
            self.labels.append(self.label_ids[repr(value)])


def _first_pass(path: Path, out_dir: Path, rows: RowFile, tokenizer: Any, options: PrepareOptions) -> _Seen:
    """Validate, clean and measure each row as it is read: a rejected row goes to rejects.jsonl at once
    (input order), a usable one to the spill file."""
    fmt, records = stream_file(path, options.fmt, options.columns)
    shape = FORMATS.get(fmt)  # None when no line parses: every row is then rejected
    seen = _Seen(fmt, Deduplicator(options.threshold), shape.label_field if shape else None)
    with open(out_dir / INVALID, "w", encoding="utf-8") as rejects:
        for item in records:
            seen.total += 1
            fields = clean_row(item.row.fields) if item.row else None
            seen.cleaned += fields is not None and fields != item.row.fields
            n, entry = _usable_or_reject(path, item, fields, fmt, tokenizer, options)
            if entry:
                rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
                seen.rejected += 1
            else:
                seen.add(item.line, fields, n)
                rows.append(fields)
    return seen


def _usable_or_reject(path: Path, item: Checked, fields: dict[str, Any] | None, fmt: str, tokenizer: Any,
                      options: PrepareOptions) -> tuple[int, dict[str, Any] | None]:
    """The cleaned row's token count, and its rejects-file entry when it cannot be used (None when it can)."""
    if item.row is None:
        as_read = item.record.fields if isinstance(item.record, Row) else None
        return 0, reject_entries(path, item.errors, lambda line: as_read)[item.line]
    n, reasons = _usable(Row(item.line, fields), fmt, tokenizer, options)
    return n, ({"line": item.line, "reasons": reasons, "row": item.row.fields} if reasons else None)


def _split_and_report(path: Path, out_dir: Path, rows: RowFile, seen: _Seen, twins: list[Twin],
                      options: PrepareOptions) -> dict[str, Any]:
    dropped = {t.dropped for t in twins if t.kind == "exact" or options.drop_near}
    kept = np.ones(len(rows), dtype=bool)
    kept[list(dropped)] = False
    keep = np.flatnonzero(kept)
    values = seen.label_values
    labels = [values[k] for k in np.frombuffer(seen.labels, dtype=np.int64)[keep].tolist()] if seen.label_field else None
    where = np.full(len(rows), -1, dtype=np.int8)
    picked = assign_splits(len(keep), options.shares, options.seed, labels, clusters(len(rows), twins)[keep])
    where[keep] = [SPLITS.index(name) for name in picked]
    _write_splits(out_dir, rows, where)
    _write_rejects(path, out_dir, rows, seen.lines, [t for t in twins if t.dropped in dropped], options.threshold)
    lengths = np.frombuffer(seen.lengths, dtype=np.int64)
    split_lengths = {name: lengths[where == s].tolist() for s, name in enumerate(SPLITS)}
    plot_lengths(split_lengths, options.max_length, out_dir / "token_lengths.png")
    report = {
        "input": str(path), "sha256": fingerprint(path), "format": seen.fmt, "rows_read": seen.total,
        "kept": int(len(keep)), "rejected": seen.rejected + len(dropped), "invalid": seen.rejected,
        "cleaned": seen.cleaned, "duplicates": _duplicate_report(seen.lines, twins, dropped, options.threshold),
        "splits": {name: len(v) for name, v in split_lengths.items()},
        "tokens": {name: describe_lengths(v) for name, v in split_lengths.items()},
        "labels": _labels_by_split(labels, picked) if labels is not None else None,
        "options": {**asdict(options), "shares": list(options.shares)},
    }
    (out_dir / "prepare_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


def _write_splits(out_dir: Path, rows: RowFile, where: Any) -> None:
    """Copy each kept row's line of the spill file into its split's file, in input order."""
    outs = [open(out_dir / f"{name}.jsonl", "wb") for name in SPLITS]
    try:
        for line, split in zip(rows.lines(), where.tolist()):
            if split >= 0:
                outs[split].write(line)
    finally:
        for out in outs:
            out.close()


def _write_rejects(path: Path, out_dir: Path, rows: RowFile, lines: array, dropped: list[Twin],
                   threshold: float) -> None:
    """rejects.jsonl in input order: the first pass's rejects merged with the dropped duplicates, each with the
    reason `data check` gives it and the (cleaned) row."""
    problems = duplicate_problems(sorted(dropped, key=lambda t: t.dropped), lines, threshold)
    index = {lines[t.dropped]: t.dropped for t in dropped}
    duplicates = reject_entries(path, problems, lambda line: rows[index[line]]).values()
    with open(out_dir / INVALID, encoding="utf-8") as invalid, \
            open(out_dir / "rejects.jsonl", "w", encoding="utf-8") as out:
        for entry in heapq.merge(map(json.loads, invalid), duplicates, key=lambda e: e["line"]):
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    (out_dir / INVALID).unlink()


def _usable(row: Row, fmt: str, tokenizer: Any, options: PrepareOptions) -> tuple[int, list[str]]:
    """The cleaned row's token count, and why it cannot be kept (empty when it can)."""
    problems = validate_row(row, fmt)
    if problems:
        return 0, [f"after cleaning: {p.render('').split(': ', 1)[1]}" for p in problems]
    n, cut = get_format(fmt).token_length(row.fields, tokenizer, options.max_length)
    if cut:
        return n, [f'field "{cut}": {n} tokens; the supervised part is cut at max_length={options.max_length}']
    if n < options.min_tokens:
        return n, [f"{n} tokens; fewer than min_tokens={options.min_tokens}"]
    return n, []


def _duplicate_report(lines: array, twins: list[Twin], dropped: set[int], threshold: float) -> dict[str, Any]:
    kept_for: dict[int, list[dict[str, Any]]] = {}
    for t in twins:
        kept_for.setdefault(t.kept, []).append({"line": lines[t.dropped], "kind": t.kind,
                                                "similarity": t.similarity, "dropped": t.dropped in dropped})
    kinds = Counter(t.kind for t in twins if t.dropped in dropped)
    return {"threshold": threshold, "exact": kinds["exact"], "near": kinds["near"],
            "clusters": [{"kept_line": lines[k], "twins": v} for k, v in sorted(kept_for.items())]}


def _labels_by_split(labels: list[Any], where: list[str]) -> dict[str, dict[str, int]]:
    return {name: dict(Counter(str(lab) for lab, w in zip(labels, where) if w == name)) for name in SPLITS}


def plot_lengths(lengths: dict[str, list[int]], max_length: int, target: Path) -> None:
    """A stacked histogram of tokens per row by split, with max_length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    shown = {name: v for name, v in lengths.items() if v}
    if shown:
        ax.hist(list(shown.values()), bins=40, stacked=True, label=[f"{k} ({len(v)})" for k, v in shown.items()])
        ax.legend()
    ax.axvline(max_length, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel(f"tokens per row (max_length={max_length} dashed)")
    ax.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
