"""`tunelab data prepare`: validate, clean, bound lengths, deduplicate, split, and say what was done.

Every input row ends in exactly one place: a split, rejects.jsonl (with its reasons), or the
duplicate list of prepare_report.json (next to the row that was kept in its place).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.data.check import describe_lengths, reject_entries
from tunelab.data.clean import clean_row
from tunelab.data.dedup import DEFAULT_THRESHOLD, Twin, clusters, find_duplicates
from tunelab.data.formats import get_format, row_text, validate_row
from tunelab.data.loading import fingerprint, validate_file
from tunelab.data.rows import Row
from tunelab.data.split import SPLITS, assign_splits


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
    checked = validate_file(path, options.fmt, options.columns)
    fmt = checked.format
    rejects = list(reject_entries(checked, checked.problems).values())
    rows, lengths, cleaned = [], [], 0
    for row in checked.rows:
        fields = clean_row(row.fields)
        cleaned += fields != row.fields
        n, reasons = _usable(Row(row.line, fields), fmt, tokenizer, options)
        if reasons:
            rejects.append({"line": row.line, "reasons": reasons, "row": row.fields})
            continue
        rows.append(Row(row.line, fields))
        lengths.append(n)
    twins = find_duplicates([row_text(r.fields, fmt) for r in rows], options.threshold)
    dropped = {t.dropped for t in twins if t.kind == "exact" or options.drop_near}
    groups = clusters(len(rows), twins)
    keep = [i for i in range(len(rows)) if i not in dropped]
    label = get_format(fmt).label_field
    labels = [rows[i].fields[label] for i in keep] if label else None
    where = assign_splits(len(keep), options.shares, options.seed, labels, [groups[i] for i in keep])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write_jsonl(out_dir / f"{name}.jsonl", [rows[i].fields for i, w in zip(keep, where) if w == name])
    _write_jsonl(out_dir / "rejects.jsonl", sorted(rejects, key=lambda r: r["line"]))
    split_lengths = {name: [lengths[i] for i, w in zip(keep, where) if w == name] for name in SPLITS}
    plot_lengths(split_lengths, options.max_length, out_dir / "token_lengths.png")
    report = {
        "input": str(path), "sha256": fingerprint(path), "format": fmt, "rows_read": checked.total,
        "rejected": len(rejects), "cleaned": cleaned,
        "duplicates": _duplicate_report(rows, twins, dropped, options.threshold),
        "splits": {name: len(v) for name, v in split_lengths.items()},
        "tokens": {name: describe_lengths(v) for name, v in split_lengths.items()},
        "labels": _labels_by_split(labels, where) if labels is not None else None,
        "options": {**asdict(options), "shares": list(options.shares)},
    }
    (out_dir / "prepare_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


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


def _duplicate_report(rows: list[Row], twins: list[Twin], dropped: set[int], threshold: float) -> dict[str, Any]:
    kept_for: dict[int, list[dict[str, Any]]] = {}
    for t in twins:
        kept_for.setdefault(t.kept, []).append({"line": rows[t.dropped].line, "kind": t.kind,
                                                "similarity": t.similarity, "dropped": t.dropped in dropped})
    kinds = Counter(t.kind for t in twins if t.dropped in dropped)
    return {"threshold": threshold, "exact": kinds["exact"], "near": kinds["near"],
            "clusters": [{"kept_line": rows[k].line, "twins": v} for k, v in sorted(kept_for.items())]}


def _labels_by_split(labels: list[Any], where: list[str]) -> dict[str, dict[str, int]]:
    return {name: dict(Counter(str(lab) for lab, w in zip(labels, where) if w == name)) for name in SPLITS}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


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
