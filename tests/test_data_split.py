"""Splits tunelab carves from train (held-out, validation, a sweep's) keep every copy of a row on one side:
a file with repeats trains, sweeps and stops early without a leakage refusal; a user's overlapping file is
still refused."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import write_jsonl
from tunelab.data import load_dataset, split_rows
from tunelab.data.leakage import Leak, LeakReport, find_leaks, refuse_leaks
from tunelab.errors import DataError, LeakageError

# A ~ B and B ~ C at Jaccard >= 0.5, but A and C below it: one chain of copies.
A = "the quick brown fox jumps over the lazy dog near the river bank today"
B = "the quick brown fox jumps over the lazy cat near the river bank at noon"
C = "a quick brown fox jumps over a lazy cat near the river bank at noon"


def own(i: int) -> str:
    return f"row number {i} says something entirely its own about topic {i * 7}"


def test_copies_of_copies_share_a_group_where_dedup_clusters_split_them():
    from tunelab.data.dedup import clusters, copy_groups, find_duplicates, jaccard, shingle_sets

    texts = [A, *map(own, range(10)), C, *map(own, range(10, 20)), B]
    sets = shingle_sets(texts)
    assert jaccard(sets[0], sets[-1]) >= 0.5 and jaccard(sets[11], sets[-1]) >= 0.5 > jaccard(sets[0], sets[11])
    walked = clusters(len(texts), find_duplicates(texts))
    assert walked[0] != walked[-1]  # dedup's kept-row clusters leave A apart from its copy B
    groups = copy_groups(texts)
    assert groups[0] == groups[11] == groups[-1]
    assert len(set(groups.tolist())) == 21  # the 20 other rows stay alone


def repeats_rows() -> list[dict]:
    """60 distinct text rows, 15 exact repeats (one in another case and spacing) and the A-B-C chain: 78 rows."""
    rows = [{"text": own(i)} for i in range(60)]
    rows += [{"text": own(i)} for i in range(0, 28, 2)] + [{"text": "  ROW number 3 says something entirely its "
                                                                     "own about topic 21 "}]
    return rows + [{"text": A}, {"text": B}, {"text": C}]


@pytest.mark.parametrize("seed", range(6))
def test_a_carve_never_leaks_and_records_how_many_rows_it_grouped(tmp_path, seed):
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", repeats_rows()))
    kept, aside = split_rows(data, 0.25, seed)
    assert find_leaks(kept, aside).leaks == []
    assert len(kept.rows) + len(aside.rows) == 78 and 14 <= len(aside.rows) <= 24
    record = aside.carved["eval"]
    assert record == kept.carved["eval"]
    assert (record["grouped_rows"], record["copy_groups"]) == (33, 16)  # 15 pairs and the A-B-C chain
    assert record["rows"] == len(aside.rows)


@pytest.mark.parametrize("seed", range(4))
def test_a_carve_keeps_the_labels_shares(seed):
    rows = [{"text": f"{name} review {i} with words of its own {i * 3}", "label": name}
            for name, start, n in (("spam", 0, 40), ("ham", 100, 20)) for i in range(start, start + n)]
    rows += rows[:10]  # repeats inside "spam"
    from tunelab.data.loading import Dataset

    data = Dataset(__file__, "classification", rows, list(range(1, len(rows) + 1)))
    _, aside = split_rows(data, 0.2, seed)
    counts = Counter(r["label"] for r in aside.rows)
    assert 8 <= counts["spam"] <= 12 and counts["ham"] == 4


def test_rows_that_are_all_copies_cannot_be_split_and_say_what_to_do(tmp_path):
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", [{"text": "same"}] * 5))
    with pytest.raises(DataError, match=r"its 5 rows are all copies of one another .*; give a held-out file with "
                                        r"data.eval"):
        split_rows(data, 0.2, 0)


def test_a_leak_in_tunelabs_own_split_never_asks_the_user_to_change_data_or_thresholds():
    leak = [Leak(held_line=4, train_line=9, kind="exact", similarity=1.0)]
    with pytest.raises(LeakageError) as caught:
        refuse_leaks(LeakReport("t.jsonl", "t.jsonl", 10, 0.5, leak, carved=True), 0.0)
    message = str(caught.value)
    assert "bug in tunelab" in message
    assert not any(word in message for word in ("data prepare", "leakage_threshold", "leakage_check", "remove them"))


def chat_with_repeats(chat_rows) -> list[dict]:
    return chat_rows[:20] + chat_rows[:8]  # 28 rows, 8 exact repeats


def test_a_file_with_repeats_trains_and_stops_early_on_carved_splits(tmp_path, tiny_config, chat_rows):
    from tunelab.train.run import run

    train = write_jsonl(tmp_path / "repeats.jsonl", chat_with_repeats(chat_rows))
    config = tiny_config(f"data.train={train}", "data.eval=null", "data.eval_fraction=0.25", "train.max_steps=4",
                         "train.early_stopping_patience=1", "train.eval_steps=2", "data.validation_fraction=0.25",
                         "eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0",
                         "eval.train_sample=0")
    result = run(config)
    data = json.loads((result.run_dir / "data.json").read_text())
    carved = data["train"]["carved"]
    assert carved["eval"]["grouped_rows"] == 16 and carved["eval"]["copy_groups"] == 8
    assert data["eval"]["carved"]["eval"] == carved["eval"]
    assert "validation" in carved and data["validation_rows"] == carved["validation"]["rows"] > 0
    assert result.summary["early_stopping"]["validation_rows"] == data["validation_rows"]


def test_a_user_given_held_out_file_that_repeats_train_is_still_refused(tmp_path, tiny_config, chat_rows):
    from tunelab.train.run import load_data

    train = write_jsonl(tmp_path / "repeats.jsonl", chat_with_repeats(chat_rows))
    held = write_jsonl(tmp_path / "held.jsonl", chat_rows[20:] + chat_rows[3:4])
    with pytest.raises(LeakageError, match=r"(?s)1 of 5 held-out rows .*data.leakage_threshold=0.20"):
        load_data(tiny_config(f"data.train={train}", f"data.eval={held}"))


def test_a_sweep_on_a_file_with_repeats_runs_its_trials(tmp_path, chat_rows):
    from tests.test_experiments_sweep import QUICK, raw_of
    from tunelab.experiments.sweep import SweepOptions, sweep

    train = write_jsonl(tmp_path / "repeats.jsonl", chat_with_repeats(chat_rows) + chat_rows[:12])
    space = tmp_path / "space.yaml"
    space.write_text("lora.r: [4, 8]\n", encoding="utf-8")
    summary = sweep(raw_of([f"data.train={train}", "data.eval_fraction=0.2", *QUICK]),
                    SweepOptions(space, trials=1, out_dir=tmp_path / "sw", metric="eval_loss", validation_fraction=0.3))
    assert summary["states"]["complete"] == 1 and summary["best"]["held_out"] is not None
    fit = load_dataset(tmp_path / "sw" / "data" / "train.jsonl")
    assert find_leaks(fit, load_dataset(tmp_path / "sw" / "data" / "validation.jsonl")).leaks == []
