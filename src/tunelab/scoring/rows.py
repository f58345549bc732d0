"""A metric row by row: what an interval needs to resample the held-out rows.

Every metric here is a function of sums over rows: a mean is sum(value) / sum(1), a held-out loss is
sum(summed loss) / sum(tokens), entity F1 is 2 * sum(true positives) / (sum(found) + sum(expected)). A
metric's `RowValues` holds each row's count vector (keyed by the row's line in its file, so two models'
rows pair up) and the function of their sums, so a resample of rows is a sum of its rows' vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

OfSums = Callable[[np.ndarray], np.ndarray]  # sums (..., k) -> the metric (...), vectorised over leading axes
OF_SUMS: dict[str, OfSums] = {}  # by name, so a saved RowValues (a run's before.json) is rebuilt with its function


def named(of_sums: OfSums) -> OfSums:
    """Register a metric-of-sums function under its name (module-level functions only: a closure has no name
    that would find it again)."""
    OF_SUMS[of_sums.__name__] = of_sums
    return of_sums


@named
def ratio(sums: np.ndarray) -> np.ndarray:
    """sum of the first column over sum of the second: a mean of per-row values, or loss per token."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], 1), 0.0)


@named
def exp_ratio(sums: np.ndarray) -> np.ndarray:
    """Perplexity: exp of the loss per token (capped as the held-out loss caps it)."""
    return np.exp(np.minimum(ratio(sums), 50.0))


@dataclass
class RowValues:
    """Each row's count vector (`units[i]` for the row keyed `keys[i]`) and the metric as a function of their
    sum (`of_sums`; default: a mean of per-row values held as (value, 1)). `outcomes`: the metric is the share
    of rows with a 0/1 outcome (exact match, accuracy, recall@1), which McNemar's test compares."""

    keys: list[int]
    units: np.ndarray
    of_sums: OfSums = ratio
    outcomes: bool = False

    @classmethod
    def means(cls, keys: list[int], values: Any, outcomes: bool = False) -> RowValues:
        """A metric that is the mean of one value per row (`outcomes`: each value 0 or 1)."""
        values = np.asarray(values, dtype=float)
        if outcomes and not np.all(np.isin(values, (0.0, 1.0))):
            raise ValueError("outcomes must be 0 or 1")
        return cls(list(keys), np.column_stack([values, np.ones(len(values))]), ratio, outcomes)

    def value(self) -> float:
        return float(self.of_sums(self.units.sum(0))) if len(self.keys) else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"row_values": 1, "keys": list(self.keys), "units": self.units.tolist(), "of_sums": self.of_sums.__name__,
                "outcomes": self.outcomes}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RowValues:
        units = np.asarray(record["units"], dtype=float).reshape(len(record["keys"]), -1)
        return cls(list(record["keys"]), units, OF_SUMS[record["of_sums"]], bool(record["outcomes"]))


def encode(value: Any) -> Any:
    """`value` with every RowValues in it (in dicts, lists, dataclasses' dicts) as JSON."""
    if isinstance(value, RowValues):
        return value.to_json()
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    """What `encode` wrote, with its RowValues rebuilt."""
    if isinstance(value, dict):
        return RowValues.from_json(value) if value.get("row_values") == 1 else {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
