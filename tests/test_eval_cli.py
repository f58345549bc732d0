"""`tunelab eval`: re-scoring a saved run gives the run's own "after" numbers; a bare model gives "before"."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from tests.conftest import write_jsonl
    from tunelab.config import load_config
    from tunelab.train.run import run

    tmp = tmp_path_factory.mktemp("evalcli")
    rows = [{"prompt": f"Number {i} in words:", "completion": f" n{i}"} for i in range(16)]
    train, held = write_jsonl(tmp / "train.jsonl", rows[:12]), write_jsonl(tmp / "eval.jsonl", rows[12:])
    config = load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama",
                                f"output_dir={tmp / 'run'}", "train.batch_size=4", "train.max_steps=3",
                                "train.learning_rate=1e-2", "train.max_length=32", "eval.max_new_tokens=4",
                                "eval.metrics=[exact_match, rouge_l]", "eval.forgetting_probe=false",
                                "eval.few_shot_k=0", "eval.train_sample=0"])
    return run(config), held


def test_rescoring_a_run_reproduces_its_after_numbers(saved_run, tmp_path, capsys):
    result, held = saved_run
    out = tmp_path / "scores.json"
    assert main(["eval", str(result.run_dir), "--data", str(held), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["metrics"]
    assert set(scores) == set(result.summary["after"])
    for name, value in result.summary["after"].items():
        assert scores[name] == pytest.approx(value, rel=1e-4), name
    assert "ROUGE-L" in capsys.readouterr().out


def test_a_bare_model_scores_like_the_untuned_before(saved_run, tmp_path):
    result, held = saved_run
    out = tmp_path / "base.json"
    assert main(["eval", "tiny-random-llama", "eval.metrics=[exact_match, rouge_l]", "eval.max_new_tokens=4",
                 "train.max_length=32", "--data", str(held), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["metrics"]
    assert scores["eval_loss"] == pytest.approx(result.summary["before"]["eval_loss"], rel=1e-4)


def test_an_unfinished_run_dir_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: tiny-random-llama\ndata:\n  train: x.jsonl\n")
    assert main(["eval", str(tmp_path), "--data", "x.jsonl"]) == 2
    assert "the run has not finished" in capsys.readouterr().err
