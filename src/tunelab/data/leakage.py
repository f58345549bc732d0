"""Train/held-out overlap: held-out rows that repeat a train row exactly or nearly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.dedup import DEFAULT_THRESHOLD, NearDupIndex, exact_key, minhashes, shingle_sets
from tunelab.data.formats import row_text
from tunelab.data.loading import Dataset
from tunelab.errors import LeakageError

MAX_LISTED = 10


@dataclass
class Leak:
    held_line: int
    train_line: int
    kind: str
    similarity: float


@dataclass
class LeakReport:
    train_path: Path
    held_path: Path
    held_rows: int
    threshold: float
    leaks: list[Leak] = field(default_factory=list)
    carved: bool = False  # tunelab split the held-out rows from train itself

    @property
    def share(self) -> float:
        """Share of held-out rows that repeat some train row."""
        return len({leak.held_line for leak in self.leaks}) / max(1, self.held_rows)

    def lines(self) -> list[str]:
        return [f"{self.held_path}:{x.held_line} repeats {self.train_path}:{x.train_line} "
                f"({x.kind}{'' if x.kind == 'exact' else f', Jaccard {x.similarity:.2f}'})" for x in self.leaks]

    def to_json(self) -> dict[str, Any]:
        return {"train": str(self.train_path), "held_out": str(self.held_path), "held_rows": self.held_rows,
                "threshold": self.threshold, "share": round(self.share, 4),
                "leaks": [vars(x) for x in self.leaks]}


def find_leaks(train: Dataset, held: Dataset, threshold: float = DEFAULT_THRESHOLD) -> LeakReport:
    """Each held-out row's closest train row at or above the Jaccard threshold (or an exact copy)."""
    train_texts = [row_text(r, train.format) for r in train.rows]
    held_texts = [row_text(r, held.format) for r in held.rows]
    # Boilerplate is judged over both sides together, as one corpus.
    sets = shingle_sets(train_texts + held_texts)
    signatures = minhashes(sets)
    exact = {}
    index = NearDupIndex(threshold)
    for i, text in enumerate(train_texts):
        exact.setdefault(exact_key(text), i)
        if sets[i]:
            index.add(i, sets[i], signatures[i])
    report = LeakReport(train.path, held.path, len(held.rows), threshold, carved=bool(held.carved))
    for j, text in enumerate(held_texts):
        k = len(train_texts) + j
        if exact_key(text) in exact:
            report.leaks.append(Leak(held.lines[j], train.lines[exact[exact_key(text)]], "exact", 1.0))
            continue
        match = index.query(sets[k], signatures[k]) if sets[k] else []
        if match:
            report.leaks.append(Leak(held.lines[j], train.lines[match[0][0]], "near", round(match[0][1], 4)))
    return report


def refuse_leaks(report: LeakReport, max_share: float) -> None:
    """Stop a run whose held-out set repeats train rows in more than `max_share` of its rows."""
    if not report.leaks or report.share <= max_share:
        return
    shown = report.lines()[:MAX_LISTED]
    more = len(report.leaks) - len(shown)
    # tunelab's own split keeps copies on one side: a leak there is tunelab's fault, not the data's.
    advice = ("\nthe held-out rows are tunelab's own split of the training file, which keeps copies on one side: "
              "this is a bug in tunelab; please report it with this message") if report.carved else (
        "\nremove them (`tunelab data prepare` splits without leaks), or allow this share with "
        f"data.leakage_threshold={math.ceil(report.share * 100) / 100:.2f}, or turn the check off with data.leakage_check=false")
    raise LeakageError(
        f"{len(report.leaks)} of {report.held_rows} held-out rows ({report.share:.1%}) repeat train rows "
        f"(exact or Jaccard >= {report.threshold}); allowed: {max_share:.1%}\n" + "\n".join(shown) +
        (f"\n... and {more} more" if more else "") + advice)
