"""Comparisons with intervals: McNemar's exact test and the paired bootstrap on hand-made rows, every metric's
per-row form giving the metric itself, and verdicts that call a change only when it is beyond its noise."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tunelab.eval.intervals import compare, comparisons
from tunelab.eval.report import gain_sentence, verdict
from tunelab.scoring.metrics import METRICS, generation_rows, generation_scores
from tunelab.scoring.rows import RowValues
from tunelab.tasks.base import Scores

LINES = list(range(1, 21))


def outcomes(values: list[int], keys: list[int] = LINES) -> RowValues:
    return RowValues.means(keys, values, outcomes=True)


def test_mcnemar_matches_the_hand_computed_exact_test():
    # 20 rows: both right on 5, both wrong on 5; the tuned model alone right on 9, the base alone on 1
    base = outcomes([1] * 5 + [0] * 5 + [0] * 9 + [1])
    tuned = outcomes([1] * 5 + [0] * 5 + [1] * 9 + [0])
    c = compare("exact_match", base, tuned)
    assert c["test"] == "McNemar exact" and (c["gained"], c["lost"]) == (9, 1)
    assert c["difference"] == pytest.approx(8 / 20)
    assert c["p_value"] == pytest.approx(2 * (10 + 1) / 2 ** 10)  # 2 P(X >= 9), X ~ Bin(10, 1/2): 0.0215
    # Clopper-Pearson for 9 of 10 is [0.5550, 0.9975]; the difference is (2p - 1) * 10 discordant / 20 rows
    assert (c["low"], c["high"]) == pytest.approx(((2 * 0.55498 - 1) / 2, (2 * 0.99747 - 1) / 2), abs=1e-4)
    assert c["clear"] and c["direction"] == "better"


def test_a_few_flips_are_no_clear_difference():
    base = outcomes([1] * 10 + [0] * 10)
    tuned = outcomes([1] * 10 + [1, 1] + [0] * 8)  # 2 gained, none lost
    c = compare("exact_match", base, tuned)
    assert c["difference"] == pytest.approx(0.1) and c["p_value"] == pytest.approx(0.5)
    assert c["low"] < 0 < c["high"] and c["direction"] == "no clear difference"


def test_rows_are_paired_by_their_line_not_their_position():
    base = outcomes([1, 0, 1, 0], keys=[4, 7, 9, 12])
    tuned = outcomes([0, 1, 0, 1, 1], keys=[12, 9, 7, 4, 30])  # line 30 has no base answer: left out
    c = compare("exact_match", base, tuned)
    assert c["rows"] == 4 and (c["gained"], c["lost"]) == (0, 0) and c["difference"] == 0.0


def test_the_paired_bootstrap_sees_a_small_shift_that_rows_differ_far_more_than():
    rng = np.random.default_rng(3)
    per_row = rng.uniform(0, 1, 100)  # rows differ by up to 1; tuning adds 0.02 to every one of them
    c = compare("token_f1", RowValues.means(range(100), per_row), RowValues.means(range(100), per_row + 0.02))
    assert c["test"] == "paired bootstrap" and c["difference"] == pytest.approx(0.02)
    assert c["low"] == pytest.approx(0.02) and c["high"] == pytest.approx(0.02) and c["clear"]
    noisy = per_row + rng.normal(0, 0.2, 100)  # the same mean shift hidden in per-row noise
    c = compare("token_f1", RowValues.means(range(100), per_row), RowValues.means(range(100), noisy))
    assert c["low"] < 0 < c["high"] and not c["clear"]
    assert c["high"] - c["low"] == pytest.approx(2 * 1.96 * 0.2 / 10, rel=0.25)  # about 1.96 SE of a mean of 100


def test_a_lower_loss_is_better_and_a_relative_change_is_a_ratio():
    units = np.array([[20.0, 10], [30.0, 10], [25.0, 10]])
    before = RowValues([1, 2, 3], units)
    after = RowValues([1, 2, 3], units * [[0.5, 1]])
    c = compare("eval_loss", before, after)
    assert c["difference"] == pytest.approx(-1.25) and c["direction"] == "better"
    assert compare("eval_loss", before, after, relative=True)["difference"] == pytest.approx(-0.5)


@pytest.mark.parametrize("name", sorted(n for n, m in METRICS.items() if m.compute is not None))
def test_every_generation_metric_row_by_row_gives_the_metric(name):
    rng = random.Random(5)
    if name.startswith("entity"):
        tags = ["B-PER I-PER O B-LOC", "B-PER O O B-LOC", "O B-ORG I-ORG O", "I-LOC B-LOC O O", "O O O O"]
        refs, answers = ([rng.choice(tags) for _ in range(40)] for _ in range(2))
    else:
        pool = ["cat", "dog", "bird", '{"a": 1}', '{"a": 2, "b": [1]}', "the cat sat"]
        refs, answers = [rng.choice(pool) for _ in range(40)], [rng.choice(pool + ["fish"]) for _ in range(40)]
    rows = generation_rows([name], answers, refs, list(range(40)))[name]
    assert rows.value() == pytest.approx(generation_scores([name], answers, refs)[name])
    assert rows.outcomes == METRICS[name].outcomes


@pytest.mark.parametrize("name", sorted(n for n, m in METRICS.items() if m.compute is not None))
def test_a_metrics_rows_survive_a_json_round_trip_as_before_json_keeps_them(name):
    """A resumed run reads the rows measured before training back from before.json; its intervals must be the
    ones an uninterrupted run computes (the metric of every resample, not only the value)."""
    import json

    from tunelab.scoring.rows import decode, encode

    rng = random.Random(6)
    tags = ["B-PER I-PER O B-LOC", "O B-ORG I-ORG O", "O O O O"]
    pool = tags if name.startswith("entity") else ["cat", "dog", "bird", '{"a": 1}', "the cat sat"]
    refs, answers = [rng.choice(pool) for _ in range(30)], [rng.choice(pool) for _ in range(30)]
    rows = generation_rows([name], answers, refs, list(range(30)))[name]
    again = decode(json.loads(json.dumps(encode({"x": [rows]}))))["x"][0]
    assert again.keys == rows.keys and again.outcomes == rows.outcomes and again.value() == rows.value()
    halves = rows.units[:15].sum(0), rows.units[15:].sum(0)
    assert [float(again.of_sums(h)) for h in halves] == [float(rows.of_sums(h)) for h in halves]


def scores(right: list[int]) -> Scores:
    metric = sum(right) / len(right)
    return Scores({"exact_match": metric}, rows={"exact_match": outcomes(right, list(range(len(right))))})


def summary_for(zero: list[int], tuned: list[int], few: list[int] | None = None) -> dict:
    others = {"zero_shot": scores(zero), **({"few_shot": scores(few)} if few else {})}
    after = scores(tuned)
    return {"metrics": ["exact_match"], "before": others["zero_shot"].metrics, "after": after.metrics,
            "baselines": {"few_shot": {"label": "3-shot", "metrics": others["few_shot"].metrics}} if few else {},
            "comparisons": comparisons(after, others)}


def test_a_gain_inside_the_noise_is_no_clear_difference():
    """60 rows, 3 answers gained and 1 lost: +3.3 points, which a raw comparison called "Tuning helped"."""
    zero = [1] * 30 + [0] * 30
    tuned = [1] * 29 + [0] + [1] * 3 + [0] * 27
    sentence = gain_sentence(summary_for(zero, tuned))
    assert sentence.startswith("No clear difference from zero-shot: exact match 50.0% zero-shot, 53.3% tuned "
                               "(+3.3 pts, 95% CI -")
    assert sentence.endswith("; 60 rows).")


def test_a_clear_gain_is_reported_with_its_interval():
    zero = [1] * 10 + [0] * 50
    tuned = [1] * 10 + [1] * 30 + [0] * 20
    sentence = gain_sentence(summary_for(zero, tuned))
    assert sentence.startswith("Tuning helped: exact match 16.7% zero-shot, 66.7% tuned (+50.0 pts, 95% CI +")
    c = summary_for(zero, tuned)["comparisons"]["zero_shot"]["exact_match"]
    assert f"95% CI {100 * c['low']:+.1f} to {100 * c['high']:+.1f} pts over zero-shot; 60 rows)" in sentence


def test_a_baseline_not_clearly_beaten_means_the_cheaper_alternative_may_suffice():
    zero = [0] * 60
    few = [1] * 36 + [0] * 24          # 60%
    tuned = [1] * 36 + [1, 1] + [0] * 22  # 63.3%: 2 more than the 3-shot baseline, none lost
    lines = verdict(summary_for(zero, tuned, few))
    assert lines[0].startswith("Tuning beat zero-shot, but no clear difference from the 3-shot baseline: "
                               "exact match 0.0% zero-shot, 60.0% 3-shot, 63.3% tuned (+63.3 pts, 95% CI")
    assert "+3.3 pts, 95% CI" in lines[0] and lines[0].endswith("the cheaper alternative may suffice.")
    better_few = [1] * 50 + [0] * 10
    assert "the 3-shot baseline did better" in verdict(summary_for(zero, tuned, better_few))[0]


def test_a_clear_loss_on_another_metric_is_named_with_its_interval():
    from tunelab.eval.report import regression_sentence

    zero, tuned = scores([1] * 30 + [0] * 30), scores([1] * 60)
    json_before = outcomes([1] * 50 + [0] * 10, list(range(60)))
    json_after = outcomes([1] * 20 + [0] * 40, list(range(60)))
    zero.rows["json_valid"], tuned.rows["json_valid"] = json_before, json_after
    zero.metrics["json_valid"], tuned.metrics["json_valid"] = json_before.value(), json_after.value()
    summary = {"metrics": ["exact_match", "json_valid"], "before": zero.metrics, "after": tuned.metrics,
               "comparisons": comparisons(tuned, {"zero_shot": zero})}
    assert regression_sentence(summary).startswith(
        "Worse after tuning: valid JSON 83.3% → 33.3% (-50.0 pts, 95% CI -")
