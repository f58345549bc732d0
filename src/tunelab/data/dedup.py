"""Exact and near-duplicate detection: MinHash LSH proposes candidates, exact Jaccard confirms them.

Rows are compared on their whole text (every field, not just the prompt: each format's `text`) as
sets of word n-grams, less boilerplate n-grams that many rows share (a repeated instruction). The
n-gram size and default threshold were chosen with `benchmarks/bench_dedup.py` (benchmarks/RESULTS.md):
word 2-grams at Jaccard 0.5 found edited copies with precision 1.000 and recall 0.987, while the
templated rows of examples/ (same instruction, different slots) stay at or below 0.27 across train and eval.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_THRESHOLD = 0.5
SHINGLE_WORDS = 2
NUM_PERM = 128
# LSH bands are tuned to miss few true pairs (weight on false negatives); verification removes the rest.
LSH_WEIGHTS = (0.2, 0.8)
# A shingle in more than this share of rows (and at least BOILERPLATE_MIN_ROWS rows) is template
# text, such as an instruction every row repeats; it says nothing about which rows are copies.
BOILERPLATE_SHARE = 0.05
BOILERPLATE_MIN_ROWS = 10
_WORD = re.compile(r"\w+")


def exact_key(text: str) -> str:
    """Equal for texts that differ only in Unicode form, case or whitespace."""
    normal = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).hexdigest()


def shingles(text: str, n: int = SHINGLE_WORDS) -> frozenset[str]:
    """Word n-grams of the case-folded text; a row shorter than n words is one shingle."""
    words = _WORD.findall(unicodedata.normalize("NFC", text).casefold())
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def shingle_sets(texts: Sequence[str], n: int = SHINGLE_WORDS) -> list[frozenset[str]]:
    """Each text's shingles less boilerplate; a row left with none is only compared exactly."""
    sets = [shingles(t, n) for t in texts]
    counts = Counter(s for shingle_set in sets for s in shingle_set)
    limit = max(BOILERPLATE_SHARE * len(sets), BOILERPLATE_MIN_ROWS)
    common = {s for s, c in counts.items() if c > limit}
    return [shingle_set - common for shingle_set in sets] if common else sets


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhashes(sets: Sequence[Iterable[str]], num_perm: int = NUM_PERM) -> list[Any]:
    from datasketch import MinHash

    return list(MinHash.generator(([s.encode("utf-8") for s in shingle_set] for shingle_set in sets),
                                  num_perm=num_perm))


class NearDupIndex:
    """Rows added so far, queried for those at or above a Jaccard threshold (exactly verified)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        self.sets: dict[int, frozenset[str]] = {}

    def add(self, key: int, shingle_set: frozenset[str], signature: Any) -> None:
        self.sets[key] = shingle_set
        self.lsh.insert(key, signature)

    def query(self, shingle_set: frozenset[str], signature: Any) -> list[tuple[int, float]]:
        """(key, similarity) of every added row at or above the threshold, most similar first."""
        found = [(k, jaccard(shingle_set, self.sets[k])) for k in self.lsh.query(signature)]
        return sorted(((k, s) for k, s in found if s >= self.threshold), key=lambda ks: (-ks[1], ks[0]))


@dataclass
class Twin:
    """Row `dropped` repeats row `kept` (indices into the input), exactly or at `similarity`."""

    kept: int
    dropped: int
    kind: str
    similarity: float


def find_duplicates(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, near: bool = True,
                    n: int = SHINGLE_WORDS) -> list[Twin]:
    """The later copies in `texts`: each names the earliest kept row it repeats. Order decides who stays."""
    first: dict[str, int] = {}
    twins: list[Twin] = []
    sets = shingle_sets(texts, n)
    signatures = minhashes(sets) if near else [None] * len(texts)
    index = NearDupIndex(threshold) if near else None
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first:
            twins.append(Twin(first[key], i, "exact", 1.0))
            continue
        match = index.query(sets[i], signatures[i]) if index and sets[i] else []
        if match:
            twins.append(Twin(match[0][0], i, "near", round(match[0][1], 4)))
            continue
        first[key] = i
        if index and sets[i]:
            index.add(i, sets[i], signatures[i])
    return twins


def clusters(n_rows: int, twins: Iterable[Twin]) -> list[int]:
    """A group id per row: a dropped twin joins the kept row's group (kept rows are never dropped)."""
    group = list(range(n_rows))
    for twin in twins:
        group[twin.dropped] = group[twin.kept]
    return group
