"""train.seeds: one run per seed, every metric as mean and 95% interval."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.eval.repeat import aggregate, interval


def test_interval_is_the_student_t_interval_of_the_mean():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, df=2) = 4.303
    assert iv["mean"] == 2.0 and iv["n"] == 3
    assert iv["high"] - 2.0 == pytest.approx(4.303 / math.sqrt(3))
    assert iv["low"] == pytest.approx(4.0 - iv["high"])
    assert interval([5.0]) == {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 1}


def test_aggregate_keeps_metrics_every_run_has():
    runs = [{"after": {"a": 0.5, "b": 1.0}, "few_shot": None}, {"after": {"a": 0.7}, "few_shot": None}]
    stats = aggregate(runs)
    assert list(stats) == ["after"] and list(stats["after"]) == ["a"]
    assert stats["after"]["a"]["mean"] == pytest.approx(0.6)


def test_seeds_run_once_each_and_report_intervals(tiny_config, capsys):
    from tunelab.cli_output import print_summary
    from tunelab.train.run import run

    result = run(tiny_config("train.seeds=[1, 2]", "eval.forgetting_probe=false", "eval.few_shot_k=0",
                             "eval.train_sample=0", "train.learning_rate=1e-2"))
    runs = [json.loads((result.run_dir / f"seed-{s}" / "summary.json").read_text()) for s in (1, 2)]
    saved = json.loads((result.run_dir / "summary.json").read_text())
    loss = saved["repeat"]["intervals"]["after"]["eval_loss"]
    assert loss["mean"] == pytest.approx((runs[0]["after"]["eval_loss"] + runs[1]["after"]["eval_loss"]) / 2)
    assert loss["low"] <= min(r["after"]["eval_loss"] for r in runs) <= loss["high"]
    assert runs[0]["after"]["eval_loss"] != runs[1]["after"]["eval_loss"]  # the seeds really differ
    assert saved["after"]["eval_loss"] == pytest.approx(loss["mean"])
    assert "95% interval" in (result.run_dir / "report.md").read_text()
    print_summary(result.run_dir, result.summary)
    assert "over seeds [1, 2]" in capsys.readouterr().out


def test_a_single_seed_list_is_refused():
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="train.seeds"):
        load_config(None, ["data.train=x.jsonl", "train.seeds=[1]"])
