"""Seeded train/validation/test split that keeps groups (near-duplicate clusters) whole and
stratifies by label: each group goes to the split furthest below its share within its label."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np

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
