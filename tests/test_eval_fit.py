"""Over/underfitting diagnosis and early stopping on real (tiny) runs, plus the rules on made-up curves."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from tunelab.eval.diagnosis import Evidence, diagnose

WORDS = "apple river stone cloud maple tiger lemon copper violet harbor candle meadow falcon silver pepper garden".split()


@pytest.fixture
def code_words(tmp_path):
    """Answers are random words: nothing carries over from train rows to held-out ones, so fitting the
    train rows harder can only be memorisation."""
    rng = random.Random(0)

    def rows(n, offset):
        return [{"prompt": f"Code word for item {i + offset}:", "completion": " " + " ".join(rng.sample(WORDS, 3))}
                for i in range(n)]

    return write_jsonl(tmp_path / "train.jsonl", rows(8, 0)), write_jsonl(tmp_path / "eval.jsonl", rows(8, 100))


def quick_run(tmp_path, code_words, *overrides):
    from tunelab.config import load_config
    from tunelab.train.run import run

    train, held = code_words
    config = load_config(None, [
        f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama", f"output_dir={tmp_path / 'run'}",
        "train.batch_size=8", "train.max_length=32", "train.warmup_ratio=0", "train.lr_scheduler=constant",
        "train.logging_steps=1", "eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0",
        *overrides])
    return run(config)


def eval_curve(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]


def test_overfit_run_is_diagnosed_and_early_stopping_keeps_the_better_weights(tmp_path, code_words):
    result = quick_run(tmp_path, code_words, "method=full", "train.learning_rate=1e-2", "train.max_steps=60",
                       "train.eval_steps=4", "train.early_stopping_patience=3")
    s = result.summary
    curve = eval_curve(result.run_dir)
    best_step, best_loss = min(curve, key=lambda p: p[1])
    stop = s["early_stopping"]
    assert s["diagnosis"]["verdict"] == "overfitting"
    assert any(f["step"] == best_step for f in s["diagnosis"]["findings"])
    assert stop["best_step"] == best_step and stop["stopped_early_at"] == curve[-1][0] < 60
    assert curve[-1][0] - best_step == 3 * 4  # three validations without improvement, then stop
    assert curve[-1][1] > best_loss * 1.05  # held-out loss had risen by the time it stopped
    assert s["after"]["eval_loss"] == pytest.approx(best_loss, rel=1e-5)  # the restored weights are the best ones
    assert s["train_sample"]["after"]["eval_loss"] < s["after"]["eval_loss"]
    assert "early_stopping_patience" in s["diagnosis"]["suggestions"][0]


def test_without_early_stopping_the_final_weights_are_kept(tmp_path, code_words):
    result = quick_run(tmp_path, code_words, "method=full", "train.learning_rate=1e-2", "train.max_steps=24",
                       "train.eval_steps=4")
    curve = eval_curve(result.run_dir)
    assert result.summary["early_stopping"] is None
    assert result.summary["after"]["eval_loss"] == pytest.approx(curve[-1][1], rel=1e-5)


def test_one_tiny_step_is_diagnosed_as_underfitting(tmp_path, code_words):
    result = quick_run(tmp_path, code_words, "train.learning_rate=1e-5", "train.max_steps=1")
    d = result.summary["diagnosis"]
    sample = result.summary["train_sample"]
    assert d["verdict"] == "underfitting"
    assert sample["after"]["eval_loss"] > 0.9 * sample["before"]["eval_loss"]
    assert any("train rows" in f["evidence"] for f in d["findings"])
    assert any("more epochs" in s for s in d["suggestions"])


def test_rules_on_made_up_curves():
    falling = [(s, 3.0 - 0.1 * s) for s in range(1, 21)]
    rising_eval = [(4, 2.0), (8, 1.5), (12, 1.6), (16, 1.9)]
    over = diagnose(Evidence(falling, rising_eval))
    assert over["verdict"] == "overfitting" and over["findings"][0]["step"] == 8
    assert "minimum 1.5000 at step 8" in over["findings"][0]["evidence"]
    steep = [(s, 3.0 * 0.8 ** s) for s in range(1, 9)]
    assert diagnose(Evidence(steep, [(8, 2.0)]))["verdict"] == "underfitting"
    fitted = [(5, 0.21), (10, 0.04), (15, 0.02), (20, 0.0093), (25, 0.006), (30, 0.0044)]  # the quickstart's curve
    assert diagnose(Evidence(fitted, [(30, 0.03)]))["verdict"] != "underfitting"
    flat = [(s, 1.0) for s in range(1, 9)]
    good = diagnose(Evidence(flat, [(4, 1.2), (8, 1.19)], {"eval_loss": 2.0}, {"eval_loss": 1.0}, {"eval_loss": 1.2}))
    assert good == {"verdict": "good fit", "findings": [], "suggestions": []}
    memorised = diagnose(Evidence([], [], {}, {"exact_match": 0.9}, {"exact_match": 0.2}))
    assert memorised["verdict"] == "overfitting" and "90% on train rows vs 20%" in memorised["findings"][0]["evidence"]


def test_eval_loss_rising_while_train_loss_also_rises_is_not_overfitting():
    both_rise = [(4, 1.0), (8, 1.2), (12, 1.5)]
    assert diagnose(Evidence(both_rise, [(4, 1.0), (8, 1.2), (12, 1.5)]))["verdict"] == "good fit"


def test_early_stopping_on_a_generation_metric(tmp_path, code_words):
    result = quick_run(tmp_path, code_words, "eval.generate=true", "eval.max_new_tokens=4", "train.max_steps=4",
                       "train.eval_steps=2", "train.early_stopping_patience=5", "train.best_metric=token_f1")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in validated] == [2, 4] and all(0.0 <= r["token_f1"] <= 1.0 for r in validated)
    assert result.summary["early_stopping"]["metric"] == "token_f1"


def test_a_generation_metric_without_generations_is_refused(tmp_path, code_words):
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match='train.best_metric: "exact_match" is not measured when task "sft" validates'):
        quick_run(tmp_path, code_words, "train.early_stopping_patience=2", "train.best_metric=exact_match")
