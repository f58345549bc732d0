"""End to end on the bundled MiniLM: a short LoRA run of the NER example lifts held-out entity F1 well
above the untuned model and the dictionary baseline (held-out entities never occur in training)."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES
from tunelab.config import load_config
from tunelab.train.run import run


@pytest.mark.e2e
def test_ner_example_learns_unseen_entities(tmp_path):
    config = load_config(EXAMPLES / "ner.yaml", [f"output_dir={tmp_path / 'run'}", "train.max_steps=30",
                                                 "train.save_steps=0", "eval.train_sample=0"])
    summary = run(config).summary
    before, after = summary["before"], summary["after"]
    assert after["entity_f1"] - before["entity_f1"] >= 0.5
    assert after["entity_f1"] > summary["baselines"]["dictionary"]["metrics"]["entity_f1"] + 0.3
    assert summary["forgetting"] is None and summary["metrics"] == ["entity_f1", "entity_precision", "entity_recall"]
