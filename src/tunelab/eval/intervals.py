"""How sure a comparison is: two models scored on the same held-out rows, compared row by row.

A difference of a few points on 60 or 200 generated answers can be noise. Each comparison in a verdict
pairs the two models' rows (matched on the row's line in its file) and gives the difference with a 95%
interval:

- a metric that is a mean of 0/1 outcomes (exact match, accuracy, recall@1): McNemar's exact test. Only
  the rows where the two models disagree carry information; given m of them, the rows the second model
  alone gets right are Binomial(m, 1/2) when neither is better. The interval is the Clopper-Pearson
  interval of that share, carried to the difference in accuracy: it excludes 0 exactly when the two-sided
  test's p-value is under 5%.
- any other metric (token F1, macro F1, entity F1, a loss, perplexity): a paired bootstrap over rows
  (scipy.stats.bootstrap, percentile, 2000 resamples, seeded): both models are scored on the same
  resampled rows, so what the rows share cancels out.

A difference whose interval holds 0 is reported as "no clear difference", with the interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.scoring.metrics import describe
from tunelab.scoring.rows import RowValues

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0  # the same rows give the same interval, run after run
MAX_CELLS = 4_000_000  # resampled values held at once (rows x count columns x resamples in one batch)


def paired(first: RowValues, second: RowValues) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Both models' count vectors on the rows both scored, in the first one's row order."""
    where = {key: i for i, key in enumerate(second.keys)}
    keys = [key for key in first.keys if key in where]
    mine = [i for i, key in enumerate(first.keys) if key in where]
    return first.units[mine], second.units[[where[key] for key in keys]], keys


def compare(name: str, first: RowValues, second: RowValues, relative: bool = False) -> dict[str, Any] | None:
    """The second model's metric against the first's on their shared rows: difference (or, `relative`, the
    ratio minus 1), its 95% interval, the test used and whether the change is clear. None under two rows."""
    a, b, keys = paired(first, second)
    if len(keys) < 2:
        return None

    def contrast(sums_a: np.ndarray, sums_b: np.ndarray) -> np.ndarray:
        one, two = first.of_sums(sums_a), second.of_sums(sums_b)
        if not relative:
            return two - one
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(one != 0, two / np.where(one != 0, one, 1) - 1, 0.0)

    found = {"metric": name, "rows": len(keys), "confidence": CONFIDENCE,
             "first": float(first.of_sums(a.sum(0))), "second": float(second.of_sums(b.sum(0))),
             "difference": float(contrast(a.sum(0), b.sum(0)))}
    outcomes = not relative and first.outcomes and second.outcomes
    found.update(mcnemar(a[:, 0], b[:, 0]) if outcomes else bootstrap(a, b, contrast))
    found["clear"] = bool(found["low"] > 0 or found["high"] < 0)
    found["direction"] = direction(name, found)
    return found


def mcnemar(first: np.ndarray, second: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired 0/1 outcomes, with the interval of the difference in their means."""
    from scipy.stats import binomtest

    n = len(first)
    gained = int(np.sum((second == 1) & (first == 0)))
    lost = int(np.sum((second == 0) & (first == 1)))
    discordant = gained + lost
    if discordant == 0:
        return {"test": "McNemar exact", "p_value": 1.0, "low": 0.0, "high": 0.0, "gained": 0, "lost": 0}
    result = binomtest(gained, discordant, 0.5)
    share = result.proportion_ci(CONFIDENCE, method="exact")
    return {"test": "McNemar exact", "p_value": float(result.pvalue), "gained": gained, "lost": lost,
            "low": (2 * share.low - 1) * discordant / n, "high": (2 * share.high - 1) * discordant / n}


def bootstrap(a: np.ndarray, b: np.ndarray, contrast: Any) -> dict[str, Any]:
    """A paired percentile bootstrap over rows of contrast(sums of a, sums of b)."""
    from scipy.stats import bootstrap as scipy_bootstrap

    n = len(a)
    if np.array_equal(a, b):  # the same answers on every row: no resample can differ
        same = float(contrast(a.sum(0), b.sum(0)))
        return {"test": "paired bootstrap", "low": same, "high": same}

    def statistic(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        picked = rows.astype(int)
        return contrast(a[picked].sum(-2), b[picked].sum(-2))

    batch = max(1, MAX_CELLS // (n * (a.shape[1] + b.shape[1])))
    result = scipy_bootstrap((np.arange(n),), statistic, vectorized=True, n_resamples=RESAMPLES, batch=batch,
                             confidence_level=CONFIDENCE, method="percentile",
                             random_state=np.random.default_rng(SEED))
    return {"test": "paired bootstrap", "low": float(result.confidence_interval.low),
            "high": float(result.confidence_interval.high)}


def direction(name: str, found: dict[str, Any]) -> str:
    """"better", "worse" (for the second model, by the metric's own sense) or "no clear difference"."""
    if not found["clear"]:
        return "no clear difference"
    up = found["low"] > 0
    return "better" if up == describe(name).higher_is_better else "worse"


def comparisons(after: Any, others: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{other's name: {metric: the tuned model against it}} for every compared metric both scored row by row."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, other in others.items():
        found = {metric: compare(metric, other.rows[metric], values) for metric, values in after.rows.items()
                 if metric in other.rows and describe(metric).compared}
        out[name] = {metric: c for metric, c in found.items() if c is not None}
    return out
