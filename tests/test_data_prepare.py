"""`tunelab data prepare`: cleaning, dedup, stratified group-preserving split, and the accounting."""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter

import pytest

from tests.conftest import write_jsonl
from tunelab.cli import main
from tunelab.data.clean import clean_text
from tunelab.data.prepare import PrepareOptions, prepare
from tunelab.data.split import assign_splits

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "da", "gu"]


def sentence(rng: random.Random, words: int = 14) -> str:
    return " ".join("".join(rng.choices(SYLLABLES, k=3)) for _ in range(words))


def messy_rows() -> tuple[list, dict]:
    """60 distinct labelled rows plus planted problems; returns the rows and what each plant should do."""
    rng = random.Random(7)
    rows = [{"text": sentence(rng), "label": "pos" if i % 3 else "neg"} for i in range(60)]
    for i in range(3):  # three near-duplicate clusters of three rows
        base = rows[i]["text"].split()
        for j in (1, 2):
            edited = base[:]
            edited[j * 4] = edited[j * 4][::-1]
            rows.append({"text": " ".join(edited), "label": rows[i]["label"]})
    rows.append({"text": "  " + rows[10]["text"].upper() + "\t", "label": rows[10]["label"]})  # exact (case, space)
    rows.append({"text": "caf\u0065\u0301 \x07" + sentence(rng), "label": "pos"})  # NFD + control char
    rows.append({"text": "\x00\x01 \u200b", "label": "neg"})  # empty after cleaning
    rows.append({"text": sentence(rng, 200), "label": "pos"})  # too long for max_length=128
    rows.append({"text": "fine text", "label": ["pos"]})  # wrong label type
    return rows, {"near": 6, "exact": 1, "rejected": 3, "distinct": 61}


def run_prepare(tmp_path, tokenizer, **kw):
    rows, expect = messy_rows()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_jsonl(tmp_path / "messy.jsonl", rows)
    out = tmp_path / "out"
    report = prepare(path, out, tokenizer, PrepareOptions(max_length=128, **kw))
    splits = {name: [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
              for name in ("train", "validation", "test")}
    return report, splits, expect, out


def test_every_row_is_accounted_for(tmp_path, tokenizer):
    report, splits, expect, out = run_prepare(tmp_path, tokenizer)
    assert report["rows_read"] == 71
    assert report["invalid"] == expect["rejected"]
    assert (report["duplicates"]["exact"], report["duplicates"]["near"]) == (expect["exact"], expect["near"])
    assert sum(len(v) for v in splits.values()) == report["kept"] == expect["distinct"]
    assert report["rejected"] == expect["rejected"] + expect["exact"] + expect["near"]
    assert report["kept"] + report["rejected"] == report["rows_read"]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == report["rejected"]  # the duplicates too, in input order, each naming its kept line
    assert [r["line"] for r in rejects] == [61, 62, 63, 64, 65, 66, 67, 69, 70, 71]
    assert rejects[6]["reasons"] == ["exact duplicate of line 11"] and rejects[6]["row"]["label"] == "pos"
    assert rejects[0]["reasons"][0].startswith("near-duplicate of line 1 (Jaccard ")
    assert rejects[7]["reasons"] == ['after cleaning: field "text": empty or whitespace only']
    assert "tokens; the supervised part is cut at max_length=128" in rejects[8]["reasons"][0]
    assert rejects[9]["reasons"] == ['field "label": expected a string or an integer, got a list']
    assert (out / "token_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["prepare_report.json", "rejects.jsonl", "test.jsonl",
                                                      "token_lengths.png", "train.jsonl", "validation.jsonl"]


def test_check_and_prepare_count_the_same_rows_rejected(tmp_path, tokenizer):
    from tunelab.data.check import check_file

    report, _, _, out = run_prepare(tmp_path, tokenizer)
    checked = check_file(tmp_path / "messy.jsonl", tokenizer, max_length=128)
    entries = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    prepared = {entry["line"]: entry["reasons"] for entry in entries}
    # line 69 is control characters and a zero-width space: empty only once prepare has cleaned it (run and
    # check read rows as they are); every other rejection, the 7 duplicates included, is the same in both
    assert set(prepared) - set(checked.rejected) == {69} and set(checked.rejected) <= set(prepared)
    assert all(prepared[line] == checked.rejected[line]["reasons"] for line in range(61, 68))
    assert checked.total == report["rows_read"] and checked.kept + len(checked.rejected) == checked.total
    assert (checked.kept, len(checked.rejected)) == (report["kept"] + 1, report["rejected"] - 1)


def test_prepare_refuses_a_directory_that_is_not_empty_and_a_failure_leaves_nothing(tmp_path, tokenizer):
    from tunelab.errors import ConfigError, DataError

    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": f"row {i}"} for i in range(5)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("an earlier prepare\n")
    with pytest.raises(ConfigError, match=r"out: not empty \(an earlier prepare\?\); give -o a new or empty"):
        prepare(path, out, tokenizer, PrepareOptions())
    assert [p.name for p in out.iterdir()] == ["train.jsonl"]
    assert prepare(path, tmp_path / "empty", tokenizer, PrepareOptions())["kept"] == 5  # new: made
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="no prompt column"):
        prepare(bad, tmp_path / "failed", tokenizer, PrepareOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty", "out", "rows.jsonl"]


def test_clusters_name_the_kept_row_and_its_twins(tmp_path, tokenizer):
    report, _, _, _ = run_prepare(tmp_path, tokenizer)
    clusters = {c["kept_line"]: sorted(t["line"] for t in c["twins"]) for c in report["duplicates"]["clusters"]}
    assert clusters == {1: [61, 62], 2: [63, 64], 3: [65, 66], 11: [67]}


def test_cleaning_normalises_text(tmp_path, tokenizer):
    _, splits, _, _ = run_prepare(tmp_path, tokenizer)
    texts = [r["text"] for rows in splits.values() for r in rows]
    cafe = next(t for t in texts if t.startswith("caf"))
    assert cafe.startswith("caf\u00e9 ") and unicodedata.is_normalized("NFC", cafe) and "\x07" not in cafe
    assert clean_text(" line one  \r\n\n\n\nline\ttwo \x1b ") == "line one\n\nline\ttwo"
    assert clean_text("  2019-01-02 ", keep_leading_space=True) == " 2019-01-02"


def test_split_is_stratified_and_seeded(tmp_path, tokenizer):
    report, splits, _, _ = run_prepare(tmp_path, tokenizer, seed=3)
    assert report["splits"] == {"train": 49, "validation": 6, "test": 6}
    for name, rows in splits.items():
        share = Counter(r["label"] for r in rows)["neg"] / len(rows)
        assert share == pytest.approx(1 / 3, abs=0.05), name
    again, _, _, _ = run_prepare(tmp_path / "again", tokenizer, seed=3)
    assert again["splits"] == report["splits"]
    other = assign_splits(61, (0.8, 0.1, 0.1), seed=4)
    assert other != assign_splits(61, (0.8, 0.1, 0.1), seed=3)
    assert assign_splits(61, (0.8, 0.1, 0.1), seed=3) == assign_splits(61, (0.8, 0.1, 0.1), seed=3)


def test_kept_near_duplicates_stay_on_one_side(tmp_path, tokenizer):
    report, splits, _, _ = run_prepare(tmp_path, tokenizer, drop_near=False)
    assert report["duplicates"]["near"] == 0 and sum(len(v) for v in splits.values()) == 67
    rows, _ = messy_rows()
    side = {r["text"]: name for name, kept in splits.items() for r in kept}
    near = [c for c in report["duplicates"]["clusters"] if c["twins"][0]["kind"] == "near"]
    assert len(near) == 3
    for cluster in near:
        lines = [cluster["kept_line"], *(t["line"] for t in cluster["twins"])]
        assert len({side[rows[line - 1]["text"]] for line in lines}) == 1


def test_groups_never_straddle_splits():
    groups = [i // 4 for i in range(200)]
    labels = ["a" if g % 2 else "b" for g in groups]
    where = assign_splits(200, (0.6, 0.2, 0.2), seed=0, labels=labels, groups=groups)
    by_group = {}
    for g, w in zip(groups, where):
        by_group.setdefault(g, set()).add(w)
    assert all(len(s) == 1 for s in by_group.values())
    assert Counter(where) == {"train": 120, "validation": 40, "test": 40}


def test_prepare_cli(tmp_path, capsys):
    rows, _ = messy_rows()
    path = write_jsonl(tmp_path / "messy.jsonl", rows)
    code = main(["data", "prepare", str(path), "-o", str(tmp_path / "o"), "--model", "tiny-random-llama",
                 "--max-length", "128", "--split", "0.5,0.25,0.25"])
    out = capsys.readouterr().out
    assert code == 0
    assert (f"71 rows read: 61 kept (3 cleaned), 10 rejected (3 invalid or too long, 1 exact and 6 near duplicates) "
            f"-> {tmp_path / 'o' / 'rejects.jsonl'}") in out
    assert "splits: train 31, validation 15, test 15" in out
    assert main(["data", "prepare", str(path), "-o", str(tmp_path / "o"), "--split", "0.5,0.5"]) == 2
