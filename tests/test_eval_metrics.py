"""The metric registry: each metric's numbers, user metrics by module:function, and config checks."""

from __future__ import annotations

import pytest

from tunelab.errors import ConfigError
from tunelab.scoring.metrics import METRICS, confusion, generation_scores, resolve_metric


def scores(*names, answers, refs):
    return generation_scores(list(names), answers, refs)


def test_text_metrics_give_known_numbers():
    answers, refs = ["The cat sat", "a dog"], ["the cat sat on the mat", "A dog."]
    got = scores("exact_match", "token_f1", "rouge_l", answers=answers, refs=refs)
    assert got["exact_match"] == 0.0
    # token F1 row 1: pred {cat, sat} vs ref {cat, sat, on, mat} -> P=1, R=0.5 -> 2/3; row 2: {dog} == {dog} -> 1
    assert got["token_f1"] == pytest.approx((2 / 3 + 1) / 2)
    # ROUGE-L row 1: LCS 3 of 3 and 6 words -> F = 2*1*0.5/1.5 = 2/3; row 2: "a dog" vs "a dog" -> 1
    assert got["rouge_l"] == pytest.approx((2 / 3 + 1) / 2)


def test_classification_metrics():
    answers = ["positive", "Positive.", "negative", "positive", "banana"]
    refs = ["positive", "positive", "positive", "negative", "negative"]
    got = scores("accuracy", "macro_f1", answers=answers, refs=refs)
    assert got["accuracy"] == pytest.approx(2 / 5)
    # positive: tp 2, fp 1, fn 1 -> 4/6; negative: tp 0 -> 0; macro = 1/3
    assert got["macro_f1"] == pytest.approx(1 / 3)
    labels, counts = confusion(answers, refs)
    assert labels == ["negative", "positive", "(other)"]
    assert counts == [[0, 1, 1], [1, 2, 0]]


def test_three_class_macro_f1_and_confusion_by_hand():
    refs = ["cat", "cat", "cat", "dog", "dog", "bird", "bird", "bird"]
    answers = ["Cat", "dog", "cat.", "dog", "bird", "bird", "fish", "cat"]
    got = scores("accuracy", "macro_f1", answers=answers, refs=refs)
    assert got["accuracy"] == pytest.approx(4 / 8)
    # cat: tp 2, fp 1, fn 1 -> 4/6; dog: tp 1, fp 1, fn 1 -> 2/4; bird: tp 1, fp 1, fn 2 -> 2/5;
    # "fish" is no reference label, so it only costs bird a false negative
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 5) / 3)  # 47/90 = 0.5222
    labels, counts = confusion(answers, refs)
    assert labels == ["bird", "cat", "dog", "(other)"]
    assert counts == [[1, 1, 0, 1], [0, 2, 1, 0], [1, 0, 1, 0]]
    assert all(isinstance(c, int) for row in counts for c in row)  # JSON-ready, not numpy integers
    assert scores("macro_f1", answers=[], refs=[]) == {"macro_f1": 0.0}


def test_json_metrics():
    refs = ['{"name": "Ada", "age": 36, "city": "London"}'] * 3
    answers = ['{"name": "Ada", "age": 36, "city": "Paris"}', "name: Ada", '{"name":"Ada","age":36,"city":"London"}']
    got = scores("json_valid", "json_fields", "exact_match", answers=answers, refs=refs)
    assert got["json_valid"] == pytest.approx(2 / 3)
    assert got["json_fields"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert got["exact_match"] == 0.0  # strict: spacing differs from the reference


@pytest.mark.parametrize("answer, reference, expected", [
    ('{"ok": 1}', '{"ok": true}', 0.0), ('{"ok": true}', '{"ok": 1}', 0.0), ('{"n": 1.0}', '{"n": 1}', 0.0),
    ('{"n": [1, true]}', '{"n": [1, 1]}', 0.0), ('{"n": {"b": 2, "a": 1}}', '{"n": {"a": 1, "b": 2}}', 1.0),
    ('[1, 5, 3]', '[1, 2, 3]', 2 / 3), ('[1, 2]', '[1, 2, 3]', 2 / 3), ('{"0": 1}', '[1]', 0.0),
    ('[1, 2, 3]', ' [1,2,3]', 1.0), ('"yes"', '"yes"', 1.0), ('[]', '[]', 1.0)])
def test_json_fields_compares_values_as_json_types(answer, reference, expected):
    """true, 1 and 1.0 are different JSON values; an array's fields are its positions."""
    assert scores("json_fields", answers=[answer], refs=[reference])["json_fields"] == pytest.approx(expected)


def test_perplexity_is_read_from_the_loss_not_generations():
    assert METRICS["perplexity"].compute is None
    assert scores("perplexity", "exact_match", answers=["x"], refs=["x"]) == {"exact_match": 1.0}


def test_user_metric_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text("def starts_same(p, r):\n    return float(p[:1] == r[:1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = scores("my_metrics:starts_same", answers=["abc", "xyz", "aaa"], refs=["a", "b", "a"])
    assert got == {"my_metrics:starts_same": pytest.approx(2 / 3)}
    with pytest.raises(ConfigError, match='cannot load user metric "my_metrics:nope"'):
        resolve_metric("my_metrics:nope")


def test_every_registered_metric_scores_a_perfect_answer_as_best():
    refs = ['{"a": 1}', '"yes"']  # both valid JSON, so json_valid can reach 1 too
    for name, metric in METRICS.items():
        if metric.compute is not None:
            assert metric.compute(refs, refs) == 1.0, name


def test_config_names_metrics_and_rejects_unknown_ones(tmp_path):
    from tunelab.config import load_config

    cfg = load_config(None, ["data.train=x.jsonl", "eval.metrics=[rouge_l, json_fields, pkg.mod:fn]"])
    assert cfg.eval.metrics == ["rouge_l", "json_fields", "pkg.mod:fn"]
    with pytest.raises(ConfigError, match=r'eval.metrics: .*got "rouge" \(did you mean "rouge_l"\?\)'):
        load_config(None, ["data.train=x.jsonl", "eval.metrics=[exact_match, rouge]"])
    with pytest.raises(ConfigError, match=r'train.best_metric: expected one of .* got "loss"'):
        load_config(None, ["data.train=x.jsonl", "train.best_metric=loss"])


def test_run_reports_the_configured_metrics(tiny_config):
    from tunelab.train.run import run

    summary = run(tiny_config("eval.metrics=[rouge_l, token_f1]", "eval.forgetting_probe=false",
                              "eval.few_shot_k=0", "eval.train_sample=0")).summary
    assert summary["metrics"] == ["rouge_l", "token_f1"]
    assert set(summary["after"]) == {"eval_loss", "eval_loss_se", "perplexity", "rouge_l", "token_f1"}
