"""Metrics fitted to the references: no JSON scores for one-word labels, accuracy and macro F1 for labels."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import EXAMPLES, write_jsonl
from tunelab.scoring.metrics import fit_metrics, label_set

QUICKSTART_METRICS = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())["eval"]["metrics"]
LABELS = ["positive", "negative", "neutral"] * 4
RECORDS = ['{"name": "Rosa", "age": 37}', '{"name": "Bruno", "age": 25}', '[1, 2]', "not json"]


def test_json_metrics_are_left_out_for_label_references_even_when_asked_for():
    names, messages = fit_metrics(QUICKSTART_METRICS, LABELS, explicit=True)
    assert names == ["exact_match", "token_f1"]
    assert "left out json_valid, json_fields: 12 of 12 references are not JSON" in messages[0]


def test_an_explicit_list_is_hinted_not_extended_for_labels():
    names, messages = fit_metrics(["exact_match"], LABELS, explicit=True)
    assert names == ["exact_match"]
    assert messages == ["the references look like class labels, 3 distinct labels (negative, neutral, positive); "
                        "add accuracy, macro_f1 to eval.metrics to score them as a classification"]


def test_the_default_list_gains_accuracy_and_macro_f1_first_for_labels():
    names, messages = fit_metrics(["exact_match", "token_f1"], LABELS, explicit=False)
    assert names == ["accuracy", "macro_f1", "exact_match", "token_f1"]
    assert len(messages) == 1 and "accuracy, macro_f1 added" in messages[0]
    assert fit_metrics(["accuracy", "macro_f1"], LABELS, explicit=True) == (["accuracy", "macro_f1"], [])


def test_json_metrics_stay_when_at_least_half_the_references_are_json():
    assert fit_metrics(QUICKSTART_METRICS, RECORDS, explicit=True) == (QUICKSTART_METRICS, [])
    names, _ = fit_metrics(QUICKSTART_METRICS, RECORDS[1:] + ["no", "no"], explicit=True)
    assert "json_valid" not in names  # 2 of 5 are JSON


def test_free_text_references_are_left_as_they_are():
    dates = [f" 20{i:02d}-01-0{i % 9 + 1}" for i in range(30)]
    assert fit_metrics(["exact_match", "token_f1"], dates, explicit=False) == (["exact_match", "token_f1"], [])
    assert fit_metrics(["json_valid"], [], explicit=True) == (["json_valid"], [])


@pytest.mark.parametrize("refs, n_labels", [
    ([f"c{i}" for i in range(20)] * 2, 20),         # 20 classes, each twice: labels
    ([f"c{i}" for i in range(21)] * 2, 0),          # 21 classes: too many to call labels
    (["a", "b", "c", "a", "b"], 0),                 # 3 values on 5 rows: not repeated enough
    (["yes", "no", " yes", "no "], 2),              # surrounding whitespace is not a new label
    (["one\nline", "two"] * 3, 0),                  # a label is a single line
    (["x" * 41, "short"] * 3, 0),                   # and a short one
])
def test_label_like_means_few_short_distinct_values_repeated(refs, n_labels):
    assert len(label_set(refs)) == n_labels


def test_a_classification_run_from_the_quickstart_config_reports_no_json_metrics(tiny_config, tmp_path):
    """Chat rows whose answers are one-word labels, scored with the quickstart's eval.metrics."""
    from tunelab.train.run import run

    rows = [{"messages": [{"role": "user", "content": f"Is {i} even or odd?"},
                          {"role": "assistant", "content": "even" if i % 2 == 0 else "odd"}]} for i in range(28)]
    train, held = write_jsonl(tmp_path / "t.jsonl", rows[:20]), write_jsonl(tmp_path / "e.jsonl", rows[20:])
    metrics = "eval.metrics=[" + ",".join(QUICKSTART_METRICS) + "]"
    events = []
    summary = run(tiny_config(f"data.train={train}", f"data.eval={held}", metrics, "eval.forgetting_probe=false",
                              "eval.few_shot_k=1", "train.max_steps=1"), on_event=events.append).summary
    assert summary["metrics"] == ["exact_match", "token_f1"]
    for measured in (summary["before"], summary["after"], summary["baselines"]["few_shot"]["metrics"], summary["train_sample"]["after"]):
        assert not {"json_valid", "json_fields"} & set(measured)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("left out json_valid, json_fields: 8 of 8" in w for w in warnings)
    assert any("add accuracy, macro_f1 to eval.metrics" in w for w in warnings)
