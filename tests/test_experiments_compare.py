"""tunelab compare: every entry gets the same budget; the leaderboard, its Pareto front and plot."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import ConfigError
from tunelab.experiments.compare import compare, entries_from, pareto_front


def test_pareto_front_keeps_points_no_other_beats_on_metric_and_cost():
    points = [(0.9, 100.0), (0.8, 50.0), (0.7, 60.0), (0.9, 120.0), (0.5, 10.0), (0.4, 10.0)]
    assert pareto_front(points, higher_is_better=True) == [True, True, False, False, True, False]  # ties count
    # a loss: lower is better, so (0.4, 10) dominates every other point
    assert pareto_front(points, higher_is_better=False) == [False, False, False, False, False, True]


def test_methods_from_one_config_drop_sections_they_do_not_read(tiny_config):
    raw = {"data": {"train": "t.jsonl"}, "method": "lora", "lora": {"r": 4}, "train": {"max_steps": 3}}
    entries = entries_from(raw, "full,lora,qlora", None, None, [])
    assert [e.label for e in entries] == ["full", "lora", "qlora"]
    assert "lora" not in entries[0].raw and entries[1].raw["lora"] == {"r": 4} and entries[2].raw["lora"] == {"r": 4}
    assert "learning_rate" not in entries[0].raw["train"]  # each method keeps its own default rate
    with pytest.raises(ConfigError, match="give a config and --methods"):
        entries_from(raw, None, None, None, [])


def test_every_method_gets_the_same_token_budget(tiny_config, tmp_path):
    from tunelab.config import load_raw

    base = tiny_config().data
    raw = load_raw(None, [f"data.train={base.train}", f"data.eval={base.eval}", "model=tiny-random-llama",
                          "train.batch_size=4", "train.epochs=1", "train.max_length=48", "eval.generate=false",
                          "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
                          "train.early_stopping_patience=2", "train.eval_steps=1"])
    entries = entries_from(raw, "full,lora,qlora", None, None, [])
    entries.append(entries_from({**raw, "lora": {"target_modules": ["no_such_layer"]}}, "lora", None, None, [])[0])
    entries[-1].label = "broken"  # a run that fails: listed as failed, the others still compare
    board = compare(entries, 1, tmp_path / "cmp", raw)
    assert board["failed"] == ["broken"]
    rows = {e["label"]: e for e in board["entries"]}
    assert board["steps"] == 5  # 20 rows / batch 4, one epoch
    assert {r["steps"] for r in rows.values()} == {5}  # early stopping was turned off for the comparison
    assert len({r["train_tokens"] for r in rows.values()}) == 1 and rows["lora"]["train_tokens"] > 0
    assert rows["full"]["trainable_params"] > 50 * rows["lora"]["trainable_params"]
    assert rows["full"]["artifact_bytes"] > rows["lora"]["artifact_bytes"]
    assert any(r["pareto"] for r in rows.values())
    saved = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert [e["label"] for e in saved["entries"]] == [e["label"] for e in board["entries"]]
    assert board["metric"] == "perplexity"
    means = [e["metric"]["mean"] for e in board["entries"]]
    assert means == sorted(means)  # lower perplexity first
    html = (tmp_path / "cmp" / "leaderboard.html").read_text()
    assert "data:image/png;base64," in html and "qlora" in html
    assert (tmp_path / "cmp" / "pareto.png").stat().st_size > 1000


def test_the_leaderboard_carries_the_best_prompting_baseline_and_its_break_even():
    from tunelab.experiments.compare import board_row, board_table

    summary = {"method": "lora", "model": "m", "after": {"exact_match": 0.9}, "trainable_params": 10,
               "resources": {"artifact_bytes": 2**20, "peak_rss_bytes": 2**30},
               "train": {"seconds": 120.0, "steps": 30, "tokens": 1000},
               "prompting": {"metric": "exact_match", "best": "retrieval", "label": "3-shot retrieved",
                             "best_value": 0.5, "tuned_value": 0.9, "prompting_may_be_enough": False,
                             "timing": "one at a time", "best_seconds": 0.84, "tuned_seconds": 0.21,
                             "best_prompt_tokens": 230.0, "tuned_prompt_tokens": 40.0, "seconds_saved": 0.63,
                             "break_even_answers": 120 / 0.63, "comparison": None, "train_seconds": 120.0}}
    row = board_row({"label": "lora", "run_dir": "r", "wall_seconds": 200.0, "summary": summary}, "exact_match")
    assert row["prompting"]["break_even_answers"] == pytest.approx(190.476, abs=1e-3)
    table = board_table({"metric": "exact_match", "entries": [{**row, "pareto": True}]})
    cells = dict(zip(table[0], table[1]))
    assert cells["best prompting"] == "3-shot retrieved 50.0%"
    assert cells["s/answer prompted → tuned"] == "0.840 → 0.210" and cells["break-even answers"] == "190"
    summary["prompting"].update(prompting_may_be_enough=True, break_even_answers=None)
    row = board_row({"label": "lora", "run_dir": "r", "wall_seconds": 200.0, "summary": summary}, "exact_match")
    cells = dict(zip(table[0], board_table({"metric": "exact_match", "entries": [{**row, "pareto": True}]})[1]))
    assert cells["best prompting"] == "3-shot retrieved 50.0% (may be enough)" and cells["break-even answers"] == "-"
