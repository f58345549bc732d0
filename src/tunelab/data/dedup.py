"""Exact and near-duplicate detection: MinHash LSH proposes candidates, exact Jaccard confirms them.

Rows are compared on their whole text (every field, not just the prompt: each format's `text`) as
sets of word n-grams, less boilerplate n-grams that many rows share (a repeated instruction). The
n-gram size and default threshold were chosen with `benchmarks/bench_dedup.py` (benchmarks/RESULTS.md):
word 2-grams at Jaccard 0.5 found edited copies with precision 1.000 and recall 0.987, while the
templated rows of examples/ (same instruction, different slots) stay at or below 0.27 across train and eval.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import re
import tempfile
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
# Misra-Gries entries for the boilerplate count (bounded memory): it finds every boilerplate shingle
# while rows average up to SKETCH_SIZE * BOILERPLATE_SHARE (5,000) shingles; beyond that, every shingle
# in more than (shingles seen) / SKETCH_SIZE rows.
SKETCH_SIZE = 100_000
MINHASH_CHUNK = 256
SET_CACHE = 1024
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
    return frozenset(map(" ".join, zip(*(words[k:] for k in range(n)))))


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
    finder = Deduplicator(threshold, near, n)
    for text in texts:
        finder.see(text)
    return finder.twins(texts)


class Deduplicator:
    """`find_duplicates` for texts that do not fit in memory: what it keeps per row is a few numbers.

    `see` each text as it streams past (an 8-byte key and a sketch of shingle counts), then `twins`
    reads them again from `texts`, which can be iterated and indexed (a file on disk): the boilerplate,
    a MinHash signature per distinct text cut into LSH bands (spilled to disk band by band), candidate
    pairs from equal bands, and the exact Jaccard of each candidate.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, near: bool = True, n: int = SHINGLE_WORDS,
                 sketch_size: int | None = None):
        self.threshold, self.near, self.n = threshold, near, n
        self.keys = array("Q")
        self.sketch = FrequentShingles(sketch_size or SKETCH_SIZE)

    def see(self, text: str) -> None:
        # 8 bytes of exact_key: two different texts among a million rows share one with odds of about 1 in 37 million.
        self.keys.append(int.from_bytes(bytes.fromhex(exact_key(text))[:8], "little"))
        if self.near:
            self.sketch.add(shingles(text, self.n))

    def twins(self, texts: Sequence[str]) -> list[Twin]:
        import numpy as np

        _, first, copy_of = np.unique(np.frombuffer(self.keys, dtype=np.uint64), return_index=True,
                                      return_inverse=True)
        common = self.boilerplate(texts) if self.near else frozenset()
        shingle_set = functools.lru_cache(maxsize=SET_CACHE)(lambda i: shingles(texts[i], self.n) - common)
        neighbours = _band_neighbours(texts, first, common, self) if self.near else None
        return self._walk(first, copy_of.reshape(-1), neighbours, shingle_set)

    def groups(self, texts: Sequence[str]) -> Any:
        """A group id per row (an array) joining every pair of exact or near copies, and through them copies of
        copies (connected components, not the walk's kept-row clusters): a split that keeps each group on one
        side leaves no row that repeats one across it, by the same candidates and Jaccard `find_leaks` uses."""
        import numpy as np
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        _, first, copy_of = np.unique(np.frombuffer(self.keys, dtype=np.uint64), return_index=True,
                                      return_inverse=True)
        copy_of = copy_of.reshape(-1)
        pairs = np.zeros((0, 2), dtype=np.int64)
        if self.near and len(first) > 1:
            common = self.boilerplate(texts)
            starts, targets = _band_neighbours(texts, first, common, self)
            shingle_set = functools.lru_cache(maxsize=SET_CACHE)(lambda i: shingles(texts[i], self.n) - common)
            pairs = np.array([(i, j) for i in first.tolist() for j in targets[starts[i]:starts[i + 1]].tolist()
                              if j > i and jaccard(shingle_set(i), shingle_set(j)) >= self.threshold],
                             dtype=np.int64).reshape(-1, 2)
        ends = copy_of[pairs]  # rows -> distinct texts
        graph = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(len(first), len(first)))
        return connected_components(graph, directed=False)[1][copy_of]

    def boilerplate(self, texts: Iterable[str]) -> frozenset[str]:
        """Shingles in more rows than BOILERPLATE_SHARE (counted exactly; the sketch only nominates)."""
        limit = max(BOILERPLATE_SHARE * len(self.keys), BOILERPLATE_MIN_ROWS)
        counts = self.sketch.counts
        if self.sketch.pruned:
            nominated = set(counts)
            counts = Counter(s for text in texts for s in shingles(text, self.n) if s in nominated)
        return frozenset(s for s, c in counts.items() if c > limit)

    def _walk(self, first: Any, copy_of: Any, neighbours: Any, shingle_set: Any) -> list[Twin]:
        """Row by row in order: an exact copy of a kept row, else its most similar kept row (LSH candidates,
        exact Jaccard), else it is kept. Only the first copy of a text is ever kept."""
        import numpy as np

        holder = np.full(len(first), -1, dtype=np.int64)  # the kept row of each distinct text
        kept = np.zeros(len(copy_of), dtype=bool)
        twins: list[Twin] = []
        for i, key in enumerate(copy_of.tolist()):
            if holder[key] >= 0:
                twins.append(Twin(int(holder[key]), i, "exact", 1.0))
                continue
            match = self._closest(i, int(first[key]), neighbours, kept, shingle_set) if neighbours else None
            if match:
                twins.append(Twin(match[0], i, "near", round(match[1], 4)))
                continue
            holder[key], kept[i] = i, True
        return twins

    def _closest(self, i: int, own: int, neighbours: tuple[Any, Any], kept: Any,
                 shingle_set: Any) -> tuple[int, float] | None:
        """The kept row before i most similar to row `own` (i's first copy), at or above the threshold."""
        starts, targets = neighbours
        found = targets[starts[own]:starts[own + 1]]
        found = found[(found < i) & kept[found]].tolist()
        scored = [(j, jaccard(shingle_set(own), shingle_set(j))) for j in found]
        scored = sorted(((j, s) for j, s in scored if s >= self.threshold), key=lambda js: (-js[1], js[0]))
        return scored[0] if scored else None


class FrequentShingles:
    """Misra-Gries counts of shingles per row: every shingle in more than (shingles seen) / size rows
    keeps a positive count, in memory bounded by 2 x size entries. Exact until the first prune."""

    def __init__(self, size: int):
        self.size, self.counts, self.pruned = size, Counter(), False

    def add(self, row_shingles: Iterable[str]) -> None:
        self.counts.update(row_shingles)
        if len(self.counts) >= 2 * self.size:
            cut = heapq.nlargest(self.size, self.counts.values())[-1]
            self.counts = Counter({s: c - cut for s, c in self.counts.items() if c > cut})
            self.pruned = True


def _band_neighbours(texts: Sequence[str], first: Any, common: frozenset[str],
                     finder: Deduplicator) -> tuple[Any, Any]:
    """Each distinct text's LSH neighbours (the other first copies that share a band with it), as
    (starts, targets): row i's neighbours are targets[starts[i]:starts[i + 1]]."""
    import numpy as np
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=finder.threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)
    is_first = np.zeros(len(texts), dtype=bool)
    is_first[first] = True
    with tempfile.TemporaryDirectory(prefix="tunelab-bands-") as spill:
        rows = _write_bands(texts, is_first, common, finder.n, (lsh.b, lsh.r), Path(spill))
        pairs = [_bucket_pairs(rows, np.fromfile(Path(spill) / str(band), dtype=np.uint64)) for band in range(lsh.b)]
    pairs = np.unique(np.concatenate(pairs), axis=0)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    return np.searchsorted(both[:, 0], np.arange(len(texts) + 1)), both[:, 1]


def _write_bands(texts: Iterable[str], wanted: Any, common: frozenset[str], n: int, shape: tuple[int, int],
                 spill: Path) -> Any:
    """MinHash each wanted row whose shingles are not all boilerplate, in chunks; each band's hashes go to
    its own file. Returns the row index behind each position of those files."""
    import numpy as np

    rows, chunk, sets = array("q"), [], []
    bands, width = shape
    outs = [open(spill / str(band), "wb") for band in range(bands)]
    try:
        for i, text in enumerate(texts):
            found = shingles(text, n) - common if wanted[i] else None
            if found:
                chunk.append(i)
                sets.append(found)
            if len(chunk) == MINHASH_CHUNK or (i == len(wanted) - 1 and chunk):
                signatures = np.stack([m.hashvalues for m in minhashes(sets)])
                for band, out in enumerate(outs):
                    out.write(_band_hash(signatures[:, band * width:(band + 1) * width]).tobytes())
                rows.extend(chunk)
                chunk, sets = [], []
    finally:
        for out in outs:
            out.close()
    return np.frombuffer(rows, dtype=np.int64)


def _band_hash(values: Any) -> Any:
    """A 64-bit hash of each row of a [rows, width] block of MinHash values (splitmix64 steps)."""
    import numpy as np

    h = np.zeros(len(values), dtype=np.uint64)
    for column in values.T:
        h = h ^ column.astype(np.uint64)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return h


def _bucket_pairs(rows: Any, hashes: Any) -> Any:
    """[pairs, 2] of row indices (smaller first) whose band hashes are equal: every pair within each bucket,
    built for all buckets of one size at once."""
    import numpy as np

    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(ordered)])
    out = [np.zeros((0, 2), dtype=np.int64)]
    for size in np.unique(sizes[sizes > 1]).tolist():
        members = np.sort(rows[order[starts[sizes == size][:, None] + np.arange(size)]], axis=1)
        first, second = np.triu_indices(size, k=1)
        out.append(np.stack([members[:, first].ravel(), members[:, second].ravel()], axis=1))
    return np.concatenate(out)


def copy_groups(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> Any:
    """A group id per text: exact and near copies (at or above `threshold`), and copies of copies, share one."""
    finder = Deduplicator(threshold)
    for text in texts:
        finder.see(text)
    return finder.groups(texts)


def clusters(n_rows: int, twins: Iterable[Twin]) -> Any:
    """A group id per row (an array): a dropped twin joins the kept row's group (kept rows are never dropped)."""
    import numpy as np

    group = np.arange(n_rows, dtype=np.int64)
    for twin in twins:
        group[twin.dropped] = group[twin.kept]
    return group
