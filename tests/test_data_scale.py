"""Data preparation at scale: the deduplicator's bounded-memory parts agree with exact counts, a file
read back from disk deduplicates as a list does, and `prepare` holds a few numbers per row, not rows."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections import Counter

import pytest

from tests.conftest import write_jsonl
from tunelab.data import dedup
from tunelab.data.dedup import Deduplicator, FrequentShingles, find_duplicates, shingles
from tunelab.data.prepare import PrepareOptions, prepare
from tunelab.data.spill import RowFile

WORDS = [f"w{i}" for i in range(400)]


def corpus(n: int, seed: int = 0) -> list[str]:
    """Rows under a shared instruction (boilerplate), with exact (case/space) and edited copies."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n):
        draw = rng.random()
        if texts and draw < 0.1:
            texts.append("  " + rng.choice(texts).upper())
        elif texts and draw < 0.35:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            texts.append(" ".join(words))
        else:
            texts.append("Answer the question below please. " + " ".join(rng.choices(WORDS, k=rng.randint(3, 40))))
    return texts


def key(twins) -> list[tuple]:
    return [(t.kept, t.dropped, t.kind, t.similarity) for t in twins]


def test_frequent_shingles_keeps_every_shingle_above_its_bound():
    rng = random.Random(1)
    rows = [frozenset(rng.choices(WORDS, weights=[1 / (i + 1) for i in range(len(WORDS))], k=30)) for _ in range(2000)]
    sketch = FrequentShingles(size=40)
    for row in rows:
        sketch.add(row)
    truth = Counter(s for row in rows for s in row)
    bound = sum(truth.values()) / 40
    assert sketch.pruned and len(sketch.counts) < 80
    frequent = {s for s, c in truth.items() if c > bound}
    assert frequent and frequent <= set(sketch.counts)
    assert all(truth[s] - bound <= c <= truth[s] for s, c in sketch.counts.items())


def test_a_pruned_sketch_finds_the_same_boilerplate_and_duplicates():
    texts = corpus(1500)
    exact = Deduplicator()
    small = Deduplicator(sketch_size=30)
    for text in texts:
        exact.see(text)
        small.see(text)
    assert not exact.sketch.pruned and small.sketch.pruned
    assert exact.boilerplate(texts) == small.boilerplate(texts) == {"answer the", "the question", "question below",
                                                                    "below please"}
    twins = exact.twins(texts)
    assert key(small.twins(texts)) == key(twins)
    kinds = Counter(t.kind for t in twins)
    assert kinds["exact"] > 100 and kinds["near"] > 200


def test_exact_copies_of_a_near_duplicate_name_its_kept_row():
    base = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    edited = base.replace("kappa", "lambda")
    twins = find_duplicates([base, edited, edited.upper(), base + " "])
    assert key(twins) == [(0, 1, "near", 0.8), (0, 2, "near", 0.8), (0, 3, "exact", 1.0)]


def test_rows_read_back_from_disk_deduplicate_as_a_list_does(tmp_path):
    texts = corpus(600, seed=3)
    rows = RowFile(tmp_path / "rows.jsonl")
    try:
        for text in texts:
            rows.append({"text": text})
        assert rows[17] == {"text": texts[17]} and len(rows) == 600
        on_disk = rows.texts(lambda fields: fields["text"])
        assert list(on_disk) == texts
        finder = Deduplicator()
        for text in on_disk:
            finder.see(text)
        assert key(finder.twins(on_disk)) == key(find_duplicates(texts))
    finally:
        rows.close()
    assert not (tmp_path / "rows.jsonl").exists()


def test_shingles_are_word_ngrams():
    assert shingles("The cat sat. THE CAT!", 2) == {"the cat", "cat sat", "sat the"}
    assert shingles("one", 3) == {"one"}


def _traced_peak(path, out, tokenizer) -> int:
    tracemalloc.start()
    try:
        prepare(path, out, tokenizer, PrepareOptions(max_length=4096))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prepare_holds_numbers_per_row_not_rows(tmp_path, tokenizer, monkeypatch):
    """Doubling a file of 2.4 KB rows grows prepare's peak (Python and numpy allocations) by under a
    quarter of the added bytes (~360 bytes per row, measured): the rows stream through a spill file,
    where holding them as parsed rows would take more than the file itself."""
    monkeypatch.setattr(dedup, "SKETCH_SIZE", 2000)
    rng = random.Random(0)
    rows = [{"prompt": " ".join(rng.choices(WORDS, k=300)), "completion": " ".join(rng.choices(WORDS, k=200))}
            for _ in range(1000)]
    small, large = write_jsonl(tmp_path / "small.jsonl", rows[:500]), write_jsonl(tmp_path / "large.jsonl", rows)
    added = large.stat().st_size - small.stat().st_size
    assert added > 1_150_000
    _traced_peak(small, tmp_path / "warm", tokenizer)  # imports and caches
    growth = _traced_peak(large, tmp_path / "b", tokenizer) - _traced_peak(small, tmp_path / "a", tokenizer)
    assert growth < 0.25 * added, f"peak grew {growth:,} bytes for {added:,} more bytes of rows"
    train = [json.loads(x) for x in (tmp_path / "b" / "train.jsonl").read_text().splitlines()]
    assert len(train) == json.loads((tmp_path / "b" / "prepare_report.json").read_text())["splits"]["train"] > 750


@pytest.mark.parametrize("rows", [[], ["only"]])
def test_tiny_inputs(rows):
    assert find_duplicates(rows) == []


def test_a_file_without_one_readable_line_is_reported_not_crashed(tmp_path, tokenizer, capsys):
    from tunelab.cli import main

    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "x"\n[1, 2]\n', encoding="utf-8")
    assert main(["data", "check", str(path), "--model", "tiny-random-llama"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:1: " in out and f"{path}:2: " in out and "2 rows (unknown): 0 kept, 2 rejected" in out
    report = prepare(path, tmp_path / "out", tokenizer, PrepareOptions())
    assert (report["rows_read"], report["rejected"], report["splits"]) == (2, 2, {"train": 0, "validation": 0,
                                                                                  "test": 0})
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [1, 2] and rejects[0]["raw"] == '{"prompt": "x"'
