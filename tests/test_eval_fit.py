"""Over/underfitting diagnosis and early stopping on real (tiny) runs, plus the rules on made-up curves."""

from __future__ import annotations

import math
import random

import pytest

from tests.conftest import REPO, write_jsonl
from tunelab.eval.diagnosis import Evidence, Point, diagnose, paired_se, read_curves
from tunelab.rundir import read_metrics

FITTED = [(5, 0.21), (10, 0.04), (15, 0.02), (20, 0.0093), (25, 0.006), (30, 0.0044)]  # a quickstart train loss
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
    return [(r["step"], r["eval_loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]


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
    assert stop["restored"] and stop["best_value"] == pytest.approx(best_loss, rel=1e-6)
    assert stop["validation_rows"] > 0  # the curve is on rows set aside from train; the held-out set only reports
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
    assert diagnose(Evidence(FITTED, [(30, 0.03)]))["verdict"] != "underfitting"
    flat = [(s, 1.0) for s in range(1, 9)]
    good = diagnose(Evidence(flat, [(4, 1.2), (8, 1.19)], {"eval_loss": 2.0}, {"eval_loss": 1.0}, {"eval_loss": 1.2}))
    assert good == {"verdict": "good fit", "findings": [], "suggestions": []}
    memorised = diagnose(Evidence([], [], {}, {"exact_match": 0.9}, {"exact_match": 0.2}))
    assert memorised["verdict"] == "overfitting" and "90% on train rows vs 20%" in memorised["findings"][0]["evidence"]


def test_eval_loss_rising_while_train_loss_also_rises_is_not_overfitting():
    both_rise = [(4, 1.0), (8, 1.2), (12, 1.5)]
    assert diagnose(Evidence(both_rise, [(4, 1.0), (8, 1.2), (12, 1.5)]))["verdict"] == "good fit"


def test_heldout_loss_standard_error_is_over_rows(tiny_model_dir):
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.tasks.lm import heldout_loss, ratio_se
    from tunelab.tasks.lm import IGNORE, Encoded

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [torch.randint(5, 200, (12,)).tolist() for _ in range(6)]
    same_size = [Encoded(ids, [IGNORE] * 4 + ids[4:]) for ids in rows]  # 8 supervised tokens each
    per_row = [heldout_loss(model, [row], pad_id=0)["eval_loss"] for row in same_size]
    together = heldout_loss(model, same_size, pad_id=0, batch_size=4)
    # equal token counts: the ratio estimator's standard error is the plain one of the per-row means
    assert together["eval_loss_se"] == pytest.approx(statistics.stdev(per_row) / math.sqrt(6), rel=1e-4)
    assert "eval_loss_se" not in heldout_loss(model, same_size[:1], pad_id=0)  # one row has no spread
    rows = heldout_loss(model, same_size, pad_id=0, batch_size=4, per_row=True)
    assert rows["eval_row_tokens"] == [8] * 6 and rows["eval_row_nll"] == pytest.approx([8 * x for x in per_row])
    # unequal rows, by hand: loss 4/4 = 1; residuals (2 - 1*1)^2 + (2 - 1*3)^2 = 2; sqrt(2/1 * 2) / 4 = 0.5
    assert ratio_se([2.0, 2.0], [1, 3], 1.0) == pytest.approx(0.5)


def epoch_curve(points, steps_per_epoch):
    """(step, value[, se]) tuples as Points with the epoch each step falls in."""
    return [Point(p[0], p[1], p[2] if len(p) > 2 else None, p[0] / steps_per_epoch) for p in points]


def test_the_quickstart_curve_is_within_its_noise_not_overfitting():
    # metrics.jsonl of the shipped demo (one epoch, 30 steps, 60 held-out rows) with per-row losses logged:
    # held-out loss 0.0295 -> 0.0323 is 0.0029 nats, 1.1 standard errors of that change; 19 of 60 rows rose
    train, held = read_curves(REPO / "tests" / "data" / "quickstart_metrics.jsonl")
    assert [(p.step, round(p.value, 4)) for p in held] == [(10, 0.0295), (20, 0.0310), (30, 0.0323)]
    assert paired_se(held[0], held[-1]) == pytest.approx(0.00265, abs=1e-5)
    assert diagnose(Evidence(train, held))["verdict"] == "good fit"
    # without per-row losses (a run logged before them), the fallback must not call it either
    no_rows = [Point(p.step, p.value, p.se, p.epoch) for p in held]
    assert diagnose(Evidence(train, no_rows))["verdict"] == "good fit"


def test_a_rise_counts_only_beyond_the_standard_error_of_the_paired_change():
    train = [(s, 2.0 - 0.05 * s) for s in range(1, 13)]
    tokens = [10] * 8
    low = [5.0, 10.0, 15.0, 20.0, 5.0, 10.0, 15.0, 20.0]  # summed loss per row: 100 / 80 tokens = 1.25

    def rose_by(diffs):  # the same +0.15 nats per token (+12%), spread differently over the rows
        last = [x + d for x, d in zip(low, diffs)]
        return diagnose(Evidence(train, [Point(4, 1.25, None, None, (low, tokens)), (8, 1.3),
                                         Point(12, sum(last) / 80, None, None, (last, tokens))]))

    every_row = rose_by([1.6, 1.4, 1.7, 1.3, 1.6, 1.4, 1.7, 1.3])  # paired se sqrt(8/7 * 0.2) / 80 = 0.006
    assert every_row["verdict"] == "overfitting" and "25.1 standard errors" in every_row["findings"][0]["evidence"]
    assert rose_by([12, -9, 10, -8, 11, -9, 8, -3])["verdict"] == "good fit"  # paired se 0.34: a coin toss per row
    without_rows = diagnose(Evidence(train, [(4, 1.25), (8, 1.3), (12, 1.4)]))  # +12% and 0.15 nats: the fallback
    assert without_rows["verdict"] == "overfitting" and "0.1500 nats" in without_rows["findings"][0]["evidence"]


def test_a_train_heldout_gap_counts_only_beyond_both_standard_errors():
    def gap(se):
        train, held = {"eval_loss": 0.5, "eval_loss_se": se}, {"eval_loss": 1.5, "eval_loss_se": se}
        return diagnose(Evidence([], [], {}, train, held))

    assert gap(0.1)["verdict"] == "overfitting"  # 1.0 > 2 * 0.14
    assert gap(0.4)["verdict"] == "good fit"  # 1.0 < 2 * 0.57


def test_overfitting_within_one_epoch_advises_early_stopping_not_fewer_epochs():
    held = epoch_curve([(10, 0.30, 0.02), (20, 0.45, 0.02), (30, 0.62, 0.02)], 30)
    d = diagnose(Evidence(epoch_curve(FITTED, 30), held))
    assert d["verdict"] == "overfitting" and d["findings"][0]["step"] == 10
    assert not any("fewer epochs:" in s or "train.epochs" in s for s in d["suggestions"])
    assert "train.early_stopping_patience=2" in d["suggestions"][0] and "train.eval_steps" in d["suggestions"][0]
    assert "trained only 1 epoch, so fewer epochs cannot help" in d["suggestions"][0]


def test_overfitting_over_several_epochs_advises_the_best_epoch():
    train = epoch_curve([(s, 2.0 - 0.1 * s) for s in range(2, 21, 2)], 4)  # 5 epochs of 4 steps
    held = epoch_curve([(4, 1.6, 0.02), (8, 1.4, 0.02), (12, 1.5, 0.02), (16, 1.7, 0.02), (20, 1.9, 0.02)], 4)
    d = diagnose(Evidence(train, held))
    assert d["verdict"] == "overfitting"
    assert d["suggestions"][0].startswith("fewer epochs: held-out loss was lowest at step 8 (epoch 2)")
    assert "train.epochs=2 or train.max_steps=8" in d["suggestions"][0]


def test_early_stopping_on_a_generation_metric(tmp_path, code_words):
    # at a learning rate of 1e-9 the greedy answers cannot change, so token F1 never improves on its first
    # value: patience 1 must stop at the second validation and keep the first one's weights
    result = quick_run(tmp_path, code_words, "eval.generate=true", "eval.max_new_tokens=4", "train.max_steps=8",
                       "train.eval_steps=2", "train.early_stopping_patience=1", "train.best_metric=token_f1",
                       "train.learning_rate=1e-9")
    validated = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "eval_loss" in r]
    stop = result.summary["early_stopping"]
    assert [r["step"] for r in validated] == [2, 4] and validated[0]["token_f1"] == validated[1]["token_f1"]
    assert stop["metric"] == "token_f1" and stop["best_step"] == 2 and stop["stopped_early_at"] == 4
    assert stop["best_value"] == validated[0]["token_f1"] and result.summary["train"]["steps"] == 4
    assert result.summary["after"]["token_f1"] == stop["best_value"]  # scored with the kept weights


def test_a_generation_metric_without_generations_is_refused(tmp_path, code_words):
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match='train.best_metric: "exact_match" is not measured when task "sft" validates'):
        quick_run(tmp_path, code_words, "train.early_stopping_patience=2", "train.best_metric=exact_match")


def test_without_a_held_out_loss_the_fit_is_not_measured():
    ev = Evidence([(1, 0.9), (2, 0.1)], [], held_out_after={"mean_reward": 0.5})
    assert diagnose(ev)["verdict"] == "not measured" and diagnose(ev)["suggestions"] == []
