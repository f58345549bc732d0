"""End to end on the bundled SmolLM2: a short DPO run on the preference example (JSON answers beat prose)
improves its held-out preference metrics over the untuned model (the reward model: test_e2e_reward.py, a
file of its own so that `make test`'s workers run the two side by side). rlhf is measured by hand
(docs/tasks-preference.md): GRPO on the bundled model takes longer than these tests may."""

from __future__ import annotations

import math

import pytest

from tests.conftest import EXAMPLES
from tunelab.config import load_config
from tunelab.train.run import run

SHORT = ["eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0", "train.max_steps=6"]


@pytest.mark.e2e
def test_dpo_moves_the_policy_towards_the_chosen_answers(tmp_path):
    # the shortest DPO run that shows it (each step scores four sequences): 6 steps, 16 held-out pairs
    held = tmp_path / "eval.jsonl"
    held.write_text("".join((EXAMPLES / "preference" / "eval.jsonl").read_text().splitlines(keepends=True)[:16]))
    config = load_config(EXAMPLES / "dpo.yaml", [f"output_dir={tmp_path / 'run'}", f"data.eval={held}",
                                                 "eval.max_examples=8", "eval.metrics=[pairwise_accuracy,reward_margin,json_valid]",
                                                 *SHORT])
    summary = run(config).summary
    before, after = summary["before"], summary["after"]
    assert before["eval_loss"] == pytest.approx(math.log(2))  # the untuned policy is its own reference
    assert after["pairwise_accuracy"] >= 0.8 and after["reward_margin"] > 0 and after["eval_loss"] < math.log(2)
