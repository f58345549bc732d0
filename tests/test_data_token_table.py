"""Training token ids in a memory-mapped Arrow file: the same rows as the lists they replace, in a quarter of
the bytes or less, and the file gone from the run directory once mapped."""

from __future__ import annotations

import random

import pytest

from tunelab.data.token_table import TokenTable, scratch, token_rows, write_token_table


def rows(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(49152) for _ in range(rng.randrange(1, 40))]
        out.append({"input_ids": ids, "labels": [-100] * (len(ids) // 2) + ids[len(ids) // 2:]})
    return out


def test_a_token_table_gives_back_every_row_exactly(tmp_path, monkeypatch):
    import tunelab.data.token_table as tt

    monkeypatch.setattr(tt, "BATCH", 7)  # several record batches, the last one partial
    expected = rows(50)
    assert write_token_table(iter(expected), tmp_path / "t.arrow") == 50
    table = TokenTable(tmp_path / "t.arrow")
    assert len(table) == 50 and [table[i] for i in range(50)] == expected
    assert table[-1] == expected[-1] and table[3:6] == expected[3:6]
    with pytest.raises(IndexError):
        table[50]
    ids = sum(len(r["input_ids"]) + len(r["labels"]) for r in expected)
    assert table.nbytes() <= 4 * ids + 2 * 4 * (50 + 8)  # int32 values and offsets (8 batches): no per-id objects
    write_token_table(iter([]), tmp_path / "empty.arrow")
    assert len(TokenTable(tmp_path / "empty.arrow")) == 0


def test_a_run_maps_its_rows_and_leaves_no_file(tmp_path):
    expected = rows(10)
    assert token_rows(lambda: iter(expected)) == expected  # outside a run: a plain list
    with scratch(tmp_path):
        table = token_rows(lambda: iter(expected))
    assert isinstance(table, TokenTable) and list(table) == expected
    assert not (tmp_path / "tokens").exists()  # unlinked once mapped; the map keeps the data alive
