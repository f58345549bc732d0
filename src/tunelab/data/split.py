"""Seeded train/validation/test split that keeps groups (near-duplicate clusters) whole and
stratifies by label: each group goes to the split furthest below its share within its label."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

SPLITS = ("train", "validation", "test")


def assign_splits(n_rows: int, shares: Sequence[float], seed: int, labels: Sequence[Hashable] | None = None,
                  groups: Sequence[int] | None = None) -> list[str]:
    """The split name of each row. Rows with the same group id always land in the same split."""
    groups = list(groups) if groups is not None else list(range(n_rows))
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    strata: dict[str, list[int]] = defaultdict(list)
    for group, rows in members.items():
        strata[repr(labels[rows[0]]) if labels is not None else ""].append(group)
    rng = random.Random(seed)
    out = [""] * n_rows
    for stratum in sorted(strata):
        units = sorted(strata[stratum])
        rng.shuffle(units)
        counts = [0] * len(SPLITS)
        for group in units:
            size = len(members[group])
            total = sum(counts) + size
            pick = max(range(len(SPLITS)), key=lambda s: (shares[s] * total - counts[s], -s))
            counts[pick] += size
            for row in members[group]:
                out[row] = SPLITS[pick]
    return out
