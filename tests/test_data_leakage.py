"""The leakage gate: planted copies of train rows in the held-out set stop a run, clean data passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, write_jsonl
from tunelab.cli import main
from tunelab.data import load_dataset
from tunelab.data.leakage import Leak, LeakReport, find_leaks, refuse_leaks
from tunelab.errors import LeakageError
from tunelab.inputs import load_data
from tunelab.train.run import run


@pytest.mark.parametrize("name", ["quickstart", "dates"])
def test_shipped_examples_are_clean(name):
    """Rows share an instruction prefix but not their content: the gate must not fire."""
    train = load_dataset(EXAMPLES / name / "train.jsonl")
    held = load_dataset(EXAMPLES / name / "eval.jsonl")
    report = find_leaks(train, held)
    assert report.leaks == [] and report.share == 0.0 and report.held_rows == 60


def planted(tmp_path):
    """quickstart eval plus three train rows: one exact copy, one with typos, one with a word added."""
    train = [json.loads(x) for x in (EXAMPLES / "quickstart" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (EXAMPLES / "quickstart" / "eval.jsonl").read_text().splitlines()]
    typo = json.loads(json.dumps(train[10]).replace("years", "yeras").replace("lives", "livse"))
    padded = json.loads(json.dumps(train[20]))
    padded["messages"][0]["content"] += " Really."
    held += [train[5], typo, padded]
    return write_jsonl(tmp_path / "eval.jsonl", held), EXAMPLES / "quickstart" / "train.jsonl"


def test_find_leaks_names_each_pair(tmp_path):
    held_path, train_path = planted(tmp_path)
    report = find_leaks(load_dataset(train_path), load_dataset(held_path))
    pairs = [(x.held_line, x.train_line, x.kind) for x in report.leaks]
    assert pairs == [(61, 6, "exact"), (62, 11, "near"), (63, 21, "near")]
    assert report.share == pytest.approx(3 / 63)
    assert all(0.5 <= x.similarity < 1 for x in report.leaks[1:])
    assert report.lines()[0] == f"{held_path}:61 repeats {train_path}:6 (exact)"


def test_run_refuses_planted_leaks_and_says_how_to_override(tmp_path, tiny_config):
    held_path, train_path = planted(tmp_path)
    config = tiny_config(f"data.train={train_path}", f"data.eval={held_path}")
    with pytest.raises(LeakageError) as caught:
        run(config)
    message = str(caught.value)
    assert message.startswith("3 of 63 held-out rows (4.8%) repeat train rows")
    assert f"{held_path}:61 repeats {train_path}:6 (exact)" in message
    assert f"{held_path}:62 repeats {train_path}:11 (near, Jaccard" in message
    assert "data.leakage_threshold=0.05" in message and "data.leakage_check=false" in message
    # Refused before the run began: the output_dir holds only the record that it failed, and why.
    left = tmp_path / "run"
    assert sorted(p.name for p in left.iterdir() if p.name != ".lock") == ["events.jsonl", "status.json"]
    status = json.loads((left / "status.json").read_text())
    assert status["state"] == "failed" and status["error"]["type"] == "LeakageError"


def test_threshold_and_switch_let_a_known_overlap_through(tmp_path, tiny_config):
    held_path, train_path = planted(tmp_path)
    allowed = tiny_config(f"data.train={train_path}", f"data.eval={held_path}", "data.leakage_threshold=0.05")
    assert [len(d.rows) for d in (load_data(allowed).train, load_data(allowed).held)] == [240, 63]
    off = tiny_config(f"data.train={train_path}", f"data.eval={held_path}", "data.leakage_check=false")
    assert [len(d.rows) for d in (load_data(off).train, load_data(off).held)] == [240, 63]
    strict = tiny_config(f"data.train={train_path}", f"data.eval={held_path}", "data.leakage_threshold=0.04")
    with pytest.raises(LeakageError):
        load_data(strict)


def test_run_passes_on_clean_data(tiny_config):
    result = run(tiny_config())
    assert result.summary["train"]["steps"] == 4


def test_leakage_cli_exit_codes(tmp_path, capsys):
    held_path, train_path = planted(tmp_path)
    assert main(["data", "leakage", str(train_path), str(EXAMPLES / "quickstart" / "eval.jsonl")]) == 0
    assert "0 of 60 held-out rows (0.0%)" in capsys.readouterr().out
    assert main(["data", "leakage", str(train_path), str(held_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [x["held_line"] for x in report["leaks"]] == [61, 62, 63] and report["share"] == 0.0476


def test_suggested_threshold_lets_the_same_data_through():
    report = LeakReport(Path("t.jsonl"), Path("e.jsonl"), held_rows=23, threshold=0.5,
                        leaks=[Leak(held_line=4, train_line=9, kind="near", similarity=0.61)])
    with pytest.raises(LeakageError, match=r"1 of 23 held-out rows \(4.3%\)") as caught:
        refuse_leaks(report, 0.0)
    assert "e.jsonl:4 repeats t.jsonl:9 (near, Jaccard 0.61)" in str(caught.value)
    assert "data.leakage_threshold=0.05" in str(caught.value)
    refuse_leaks(report, 0.05)


def test_config_default_matches_the_measured_threshold():
    from tunelab.config import DataConfig
    from tunelab.data.dedup import DEFAULT_THRESHOLD

    assert DataConfig.model_fields["near_dup_threshold"].default == DEFAULT_THRESHOLD
