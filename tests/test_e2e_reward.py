"""End to end on the bundled SmolLM2: a short reward-model run on the preference example (JSON answers beat
prose) improves held-out pairwise accuracy and margin over the untuned model."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES
from tunelab.config import load_config
from tunelab.train.run import run

SHORT = ["train.max_steps=10", "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=8"]


@pytest.mark.e2e
def test_reward_model_learns_the_preference(tmp_path):
    config = load_config(EXAMPLES / "reward.yaml", [f"output_dir={tmp_path / 'run'}", *SHORT])
    summary = run(config).summary
    before, after = summary["before"], summary["after"]
    assert after["pairwise_accuracy"] >= before["pairwise_accuracy"] + 0.2
    assert after["reward_margin"] > before["reward_margin"] and after["eval_loss"] < before["eval_loss"]
