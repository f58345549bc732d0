"""Near-duplicate detection: precision/recall on edited copies, and speed on 100,000 rows.

Rows are generated documents (3-6 sentences from a Zipf-distributed vocabulary; a third open with
one of a few shared boilerplate sentences) and, for 30%, templated records (a fixed instruction and a
short filled slot, like examples/quickstart: distinct rows that share most of their words; in a row
this short a changed number is a different record, so they serve as hard negatives, not sources). 30% of the documents get
1-3 edited copies, each with 1-3 edits: typos, two sentences swapped, numbers changed. A dropped row
is a true positive when the row it was matched to is a copy of the same original.

    python benchmarks/bench_dedup.py            # grid on 5,000 rows, then timing on 100,000
    python benchmarks/bench_dedup.py --rows 20000 --grid-rows 2000
"""

from __future__ import annotations

import argparse
import random
import time

from pathlib import Path

from tunelab.data import load_dataset
from tunelab.data.dedup import (DEFAULT_THRESHOLD, SHINGLE_WORDS, exact_key, find_duplicates, jaccard,
                                shingle_sets, shingles)
from tunelab.data.formats import row_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "da", "gu", "ho", "ji", "be", "fo", "ti"]


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    words = {"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(size * 2)}
    return sorted(words)[:size]


def sentence(rng: random.Random, vocab: list[str], weights: list[float]) -> str:
    words = rng.choices(vocab, weights=weights, k=rng.randint(6, 14))
    if rng.random() < 0.5:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 9999)))
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, vocab: list[str], weights: list[float], boilerplate: list[str]) -> str:
    parts = [sentence(rng, vocab, weights) for _ in range(rng.randint(3, 6))]
    if rng.random() < 0.33:
        parts.insert(0, rng.choice(boilerplate))
    return " ".join(parts)


def typo(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 2:
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.5 else w[:j] + w[j + 1:]
    return " ".join(words)


def swap_sentences(rng: random.Random, text: str) -> str:
    parts = [p for p in text.split(". ") if p]
    if len(parts) > 2:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
    return ". ".join(parts)


def change_numbers(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    numbered = [i for i, w in enumerate(words) if w.rstrip(".").isdigit()]
    for i in numbered or [rng.randrange(len(words))]:
        words[i] = str(rng.randint(2, 9999)) + ("." if words[i].endswith(".") else "")
    return " ".join(words)


EDITS = [typo, swap_sentences, change_numbers]


INSTRUCTIONS = ["Extract the person's name, age and city as JSON.", "Summarise the record below in one line.",
                "Answer with the city only, nothing else."]
SLOTS = ["{name} is {age} years old and lives in {city}.", "Meet {name} from {city}, who turned {age} this year.",
         "Profile: {name}. Age: {age}. City: {city}."]


def templated(rng: random.Random, vocab: list[str]) -> str:
    """A distinct row that shares most of its words with others: a fixed instruction and a filled slot."""
    name = " ".join(rng.choice(vocab).capitalize() for _ in range(2))
    record = rng.choice(SLOTS).format(name=name, age=rng.randint(18, 90), city=rng.choice(vocab).capitalize())
    return f"{rng.choice(INSTRUCTIONS)}\n\n{record}"


def edited_copy(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(EDITS)(rng, text)
    return text


def make_rows(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """n rows and, for each, the id of the original it came from (copies share their original's id)."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    boilerplate = [sentence(rng, vocab, weights) for _ in range(5)]
    rows: list[tuple[str, int]] = []
    while len(rows) < n:
        origin = len(rows)
        if rng.random() < 0.3:
            rows.append((templated(rng, vocab), origin))
            continue
        doc = document(rng, vocab, weights, boilerplate)
        rows.append((doc, origin))
        if rng.random() < 0.3:
            rows.extend((edited_copy(rng, doc), origin) for _ in range(rng.randint(1, 3)))
    rows = rows[:n]
    rng.shuffle(rows)
    return [t for t, _ in rows], [o for _, o in rows]


def score(twins, origin: list[int]) -> tuple[float, float]:
    seen: set[int] = set()
    positives = 0
    for o in origin:
        positives += o in seen
        seen.add(o)
    hits = sum(origin[t.kept] == origin[t.dropped] for t in twins)
    return hits / max(1, len(twins)), hits / max(1, positives)


def grid(rows: int) -> None:
    texts, origin = make_rows(rows, seed=1)
    print(f"grid on {rows:,} rows (precision / recall):")
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    print("  shingle   " + "  ".join(f"J>={t:<9}" for t in thresholds))
    for n in (1, 2, 3, 4, 5):
        cells = [score(find_duplicates(texts, t, n=n), origin) for t in thresholds]
        print(f"  {n}-gram    " + "  ".join(f"{p:.3f}/{r:.3f}" for p, r in cells))


def templated_margin() -> None:
    """The highest train/eval similarity in the shipped examples: distinct rows sharing an instruction."""
    print("\nhighest train-eval Jaccard in examples/ (clean by construction; must stay below the threshold):")
    for name in ("quickstart", "dates"):
        train, held = (load_dataset(EXAMPLES / name / f"{side}.jsonl") for side in ("train", "eval"))
        texts = [row_text(r, train.format) for r in train.rows + held.rows]
        for label, make in (("boilerplate removed", shingle_sets), ("all shingles", _plain_sets)):
            cells = [_max_cross(make(texts, n), len(train.rows)) for n in range(1, 6)]
            print(f"  {name:<10} {label:<20} " + "  ".join(f"{n}-gram {c:.3f}" for n, c in enumerate(cells, 1)))


def _plain_sets(texts: list[str], n: int) -> list[frozenset[str]]:
    return [shingles(t, n) for t in texts]


def _max_cross(sets: list[frozenset[str]], n_train: int) -> float:
    return max(jaccard(x, y) for x in sets[n_train:] for y in sets[:n_train] if x and y)


def brute_force_seconds(texts: list[str], sample: int) -> float:
    sets = [shingles(t) for t in texts[:sample]]
    start = time.perf_counter()
    for i in range(len(sets)):
        for j in range(i):
            if jaccard(sets[i], sets[j]) >= DEFAULT_THRESHOLD:
                break
    return time.perf_counter() - start


def timing(rows: int, sample: int) -> None:
    texts, origin = make_rows(rows, seed=2)
    start = time.perf_counter()
    twins = find_duplicates(texts)
    lsh_s = time.perf_counter() - start
    precision, recall = score(twins, origin)
    start = time.perf_counter()
    exact = {}
    exact_twins = []
    for i, t in enumerate(texts):
        key = exact_key(t)
        if key in exact:
            exact_twins.append(type(twins[0])(exact[key], i, "exact", 1.0))
        exact.setdefault(key, i)
    exact_s = time.perf_counter() - start
    e_precision, e_recall = score(exact_twins, origin)
    brute = brute_force_seconds(texts, sample) * (rows / sample) ** 2
    print(f"\n{rows:,} rows, default {SHINGLE_WORDS}-gram shingles at Jaccard {DEFAULT_THRESHOLD}:")
    print(f"  MinHash LSH + verify : precision {precision:.3f}  recall {recall:.3f}  {lsh_s:7.1f} s "
          f"({rows / lsh_s:,.0f} rows/s)")
    print(f"  exact-hash baseline  : precision {e_precision:.3f}  recall {e_recall:.3f}  {exact_s:7.1f} s")
    print(f"  brute-force Jaccard  : {brute:,.0f} s extrapolated from {sample:,} rows (n^2); "
          f"LSH is {brute / lsh_s:,.0f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--grid-rows", type=int, default=5_000)
    parser.add_argument("--brute-sample", type=int, default=2_000)
    args = parser.parse_args()
    if args.grid_rows:
        grid(args.grid_rows)
        templated_margin()
    timing(args.rows, args.brute_sample)


if __name__ == "__main__":
    main()
