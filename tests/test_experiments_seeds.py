"""train.seeds: one run per seed, every metric as mean and 95% interval."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.experiments import aggregate, interval, t95


@pytest.mark.parametrize("df, textbook", [(1, 12.706), (2, 4.303), (10, 2.228), (11, 2.201), (15, 2.131),
                                          (29, 2.045), (30, 2.042), (120, 1.980)])
def test_t_critical_values_match_the_textbook_table(df, textbook):
    assert t95(df) == pytest.approx(textbook, abs=5e-4)


def test_interval_is_the_student_t_interval_of_the_mean():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, df=2) = 4.303
    assert iv["mean"] == 2.0 and iv["n"] == 3
    assert iv["high"] - 2.0 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert iv["low"] == pytest.approx(4.0 - iv["high"])
    assert interval([5.0]) == {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 1}


def test_interval_for_twelve_seeds_uses_t_at_eleven_degrees_of_freedom():
    values = [float(v) for v in range(12)]  # mean 5.5, sd sqrt(13) = 3.6056
    iv = interval(values)
    assert iv["high"] - 5.5 == pytest.approx(2.201 * math.sqrt(13) / math.sqrt(12), abs=1e-3)  # 2.291


def test_aggregate_keeps_metrics_every_run_has():
    runs = [{"after": {"a": 0.5, "b": 1.0}, "baselines": {}}, {"after": {"a": 0.7}, "baselines": {}}]
    stats = aggregate(runs)
    assert list(stats) == ["after"] and list(stats["after"]) == ["a"]
    assert stats["after"]["a"]["mean"] == pytest.approx(0.6)


def test_seeds_run_once_each_and_report_intervals(tiny_config, capsys):
    from tunelab.cli_output import print_summary
    from tunelab.experiments import run_experiment

    result = run_experiment(tiny_config("train.seeds=[1, 2]", "eval.forgetting_questions=20", "eval.few_shot_k=0",
                             "eval.train_sample=0", "train.learning_rate=1e-2"))
    runs = [json.loads((result.run_dir / f"seed-{s}" / "summary.json").read_text()) for s in (1, 2)]
    saved = json.loads((result.run_dir / "summary.json").read_text())
    loss = saved["repeat"]["intervals"]["after"]["eval_loss"]
    a, b = (r["after"]["eval_loss"] for r in runs)
    assert a != b  # the seeds really differ
    assert loss["mean"] == pytest.approx((a + b) / 2)
    # two values: sd = |a - b| / sqrt 2, so the half-width is t(0.975, 1) * |a - b| / 2 = 6.353 |a - b|
    assert loss["high"] - loss["mean"] == pytest.approx(12.706 * abs(a - b) / 2, rel=1e-4)
    assert loss["mean"] - loss["low"] == pytest.approx(12.706 * abs(a - b) / 2, rel=1e-4)
    assert "eval_loss_se" not in saved["repeat"]["intervals"]["after"]  # a standard error is not a metric
    assert saved["after"]["eval_loss"] == pytest.approx(loss["mean"])
    report = (result.run_dir / "report.md").read_text()
    assert "95% interval over seeds" in report and "spread between seeds only" in report
    print_summary(result.run_dir, result.summary)
    assert "over seeds [1, 2]" in capsys.readouterr().out
    # nothing in the parent summary is seed 1's alone: forgetting and train are means over both seeds
    changes = [r["forgetting"]["perplexity_change"] for r in runs]
    assert changes[0] != changes[1] and saved["forgetting"]["perplexity_change"] == pytest.approx(sum(changes) / 2)
    assert saved["forgetting"]["seeds"] == 2 and "means over 2 seeds" in report
    assert saved["train"]["seconds"] == pytest.approx(sum(r["train"]["seconds"] for r in runs) / 2)
    assert sorted(sum(saved["diagnosis"]["per_seed"].values(), [])) == [1, 2]  # every seed's verdict, named
    c = saved["comparisons"]["zero_shot"]["eval_loss"]
    per_seed = [r["comparisons"]["zero_shot"]["eval_loss"] for r in runs]
    assert c["seeds"] == 2 and c["difference"] == pytest.approx(sum(p["difference"] for p in per_seed) / 2)
    assert c["high"] - c["low"] >= min(p["high"] - p["low"] for p in per_seed)  # the held-out noise stays in
    # the cost of an answer is the seeds' mean, and the prompting line is weighed again from the means
    assert saved["cost"]["tuned"]["prompt_tokens"] == runs[0]["cost"]["tuned"]["prompt_tokens"]
    assert saved["cost"]["tuned"]["seconds_batched"] == pytest.approx(
        sum(r["cost"]["tuned"]["seconds_batched"] for r in runs) / 2)
    assert saved["prompting"]["train_seconds"] == pytest.approx(saved["train"]["seconds"])
    assert saved["prompting"]["comparison"] == saved["comparisons"]["zero_shot"]["exact_match"]
    assert "## Cost per answer (means over seeds)" in report


def test_an_interval_over_seeds_holds_both_noises():
    from tunelab.experiments import combined

    # seeds' differences 0.1 and 0.3: t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.1414 / 1.414 = 1.2706;
    # each seed's own held-out interval has half-width 0.1; in quadrature: sqrt(1.2706^2 + 0.1^2) = 1.2745
    mean, low, high = combined([0.1, 0.3], [0.0, 0.2], [0.2, 0.4])
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(1.2745, abs=1e-3)
    assert mean - low == pytest.approx(high - mean)


def test_compare_shows_the_seeds_mean_forgetting_not_the_first_seeds():
    from tunelab.experiments import summary_over_seeds
    from tunelab.experiments.compare import board_row

    def one(change: float, seconds: float) -> dict:
        return {"before": {"exact_match": 0.1}, "after": {"exact_match": 0.5}, "baselines": {}, "method": "lora",
                "model": "m", "trainable_params": 10, "resources": {"artifact_bytes": 5, "peak_rss_bytes": 7},
                "train": {"seconds": seconds, "steps": 4, "tokens": 100},
                "forgetting": {"perplexity_before": 10.0, "perplexity_after": 10.0 * (1 + change),
                               "perplexity_change": change, "perplexity_interval": [change - 0.01, change + 0.01],
                               "questions": 0, "flagged": False, "perplexity_flagged": False, "remedies": []},
                "diagnosis": {"verdict": "good fit", "findings": [], "suggestions": []}}

    summary = summary_over_seeds([one(0.02, 10.0), one(0.10, 14.0)], [1, 2], ["a", "b"])
    assert summary["forgetting"]["perplexity_change"] == pytest.approx(0.06)
    assert summary["train"] == {"seconds": 12.0, "steps": 4, "tokens": 100}
    row = board_row({"label": "lora", "run_dir": "r", "wall_seconds": 1.0, "summary": summary}, "exact_match")
    assert row["forgetting_perplexity_change"] == pytest.approx(0.06)
    low, high = row["forgetting_perplexity_interval"]
    assert low < 0.02 and high > 0.10  # the seeds' spread widens it past either seed


def test_a_single_seed_list_is_refused():
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="train.seeds"):
        load_config(None, ["data.train=x.jsonl", "train.seeds=[1]"])
