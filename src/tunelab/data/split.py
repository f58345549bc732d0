"""Seeded splits that keep groups (near-duplicate clusters) whole and stratify by label: each group goes to
the split furthest below its share within its label. `data prepare` splits a file in three with it; a run,
a sweep or early stopping carves rows from train with `split_rows`."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np

from tunelab.data.dedup import DEFAULT_THRESHOLD, copy_groups
from tunelab.data.formats import FORMATS, row_text
from tunelab.data.loading import Dataset
from tunelab.errors import DataError

SPLITS = ("train", "validation", "test")


def assign_splits(n_rows: int, shares: Sequence[float], seed: int, labels: Sequence[Hashable] | None = None,
                  groups: Sequence[int] | None = None) -> list[str]:
    """The split name of each row. Rows with the same group id always land in the same split.

    Memory is a few numbers per row (arrays, not per-group lists), so a prepared file of millions of
    rows splits in place."""
    groups = np.arange(n_rows) if groups is None else np.asarray(groups, dtype=np.int64)
    _, first, member_of, sizes = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    strata: dict[str, list[int]] = defaultdict(list)
    for unit, row in enumerate(first.tolist()):  # units in ascending group id
        strata[repr(labels[row]) if labels is not None else ""].append(unit)
    rng = random.Random(seed)
    pick = np.zeros(len(first), dtype=np.int8)
    sizes = sizes.tolist()
    for stratum in sorted(strata):
        units = strata[stratum]
        rng.shuffle(units)
        counts = [0] * len(SPLITS)
        for unit in units:
            total = sum(counts) + sizes[unit]
            chosen = max(range(len(SPLITS)), key=lambda s: (shares[s] * total - counts[s], -s))
            counts[chosen] += sizes[unit]
            pick[unit] = chosen
    return [SPLITS[p] for p in pick[member_of.reshape(-1)].tolist()]


def split_rows(dataset: Dataset, fraction: float, seed: int, threshold: float = DEFAULT_THRESHOLD,
               name: str = "eval", fix: str = "give a held-out file with data.eval") -> tuple[Dataset, Dataset]:
    """A seeded split of one dataset into the rows kept and a `fraction` set aside as `name`, stratified by the
    format's label. Exact and near copies of a row (at `threshold`, as the leakage check finds them) stay on
    one side, so a split tunelab makes never leaks; at least one row on each side. Both parts record it."""
    n = len(dataset.rows)
    groups = copy_groups([row_text(row, dataset.format) for row in dataset.rows], threshold) if n else np.zeros(0)
    if len(np.unique(groups)) < 2:
        why = f"{n} row(s)" if n < 2 else \
            f"its {n} rows are all copies of one another (exact or Jaccard >= {threshold}), so they"
        raise DataError(f"{dataset.path}: {why} cannot be split into train and {name} rows; {fix}")
    label = FORMATS[dataset.format].label_field
    labels = [row[label] for row in dataset.rows] if label else None
    picked = assign_splits(n, (1 - fraction, fraction, 0.0), seed, labels, groups)
    held = _both_sides(np.array([where == "validation" for where in picked]), groups)
    sizes = np.bincount(groups)
    record = {"fraction": fraction, "seed": seed, "rows": int(held.sum()), "threshold": threshold,
              "grouped_rows": int((sizes[groups] > 1).sum()), "copy_groups": int((sizes > 1).sum())}
    kept, aside = dataset.pick(np.flatnonzero(~held).tolist()), dataset.pick(np.flatnonzero(held).tolist())
    kept.carved[name] = aside.carved[name] = record
    return kept, aside


def _both_sides(held: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """`held` with the smallest group (the first such by row) moved across when one side came out empty: a
    tiny split's shares can round a side down to nothing."""
    if held.any() and not held.all():
        return held
    sizes = np.bincount(groups)
    smallest = groups[np.argmin(sizes[groups])]
    held = held.copy()
    held[groups == smallest] = not held[0]
    return held
