"""The forgetting probe: shipped data, the comparison and its flag, replay; and full vs LoRA on the real model."""

from __future__ import annotations

import pytest

from tunelab.data.general import probe_questions, probe_texts, replay_texts
from tunelab.eval import forgetting
from tunelab.tasks.lm import replay_examples, text_windows


def test_probe_data_ships_with_the_package():
    texts, replay, questions = probe_texts(), replay_texts(), probe_questions()
    assert len(texts) >= 6 and sum(map(len, texts)) > 2000
    assert len(questions) == 20 and all(q["question"].endswith("?") and q["answers"] for q in questions)
    assert not set(texts) & set(replay)  # replay must never rehearse the probe's own text


@pytest.mark.parametrize("output, ok", [
    ("The capital of France is Paris.", True), ("paris", True), ("Parisian food is great", False),
    ("A day has 24 hours.", True), ("It has 124 hours", False)])
def test_answers_are_matched_as_whole_words(output, ok):
    answers = ["Paris"] if "ari" in output.lower() else ["24"]
    assert forgetting.answered(output, answers) is ok


def test_compare_flags_beyond_the_threshold_and_offers_replay():
    base = {"perplexity": 20.0, "accuracy": 1.0, "questions": 20}
    mild = forgetting.compare(base, {"perplexity": 21.0, "accuracy": 0.95, "questions": 20}, threshold=0.1)
    assert mild["perplexity_change"] == pytest.approx(0.05) and mild["accuracy_change"] == pytest.approx(-0.05)
    assert not mild["flagged"] and mild["remedies"] == []
    worse_text = forgetting.compare(base, {"perplexity": 23.0, "accuracy": 1.0, "questions": 20}, threshold=0.1)
    worse_answers = forgetting.compare(base, {"perplexity": 20.0, "accuracy": 0.85, "questions": 20}, threshold=0.1)
    assert worse_text["flagged"] and worse_answers["flagged"]
    assert "data.replay_fraction" in worse_text["remedies"][0]


def test_probe_windows_cover_every_token(tokenizer):
    windows = text_windows(["word " * 300], tokenizer, window=100)
    total = len(tokenizer("word " * 300)["input_ids"]) + 1
    assert [len(w.input_ids) for w in windows] == [100] * (total // 100) + ([total % 100] if total % 100 else [])
    assert all(w.labels == w.input_ids for w in windows)


@pytest.mark.parametrize("fraction, n_train, expected", [(0.0, 40, 0), (0.2, 40, 10), (0.5, 40, 40), (0.5, 3, 3)])
def test_replay_makes_up_the_asked_share_of_training(tokenizer, fraction, n_train, expected):
    picked = replay_examples(replay_texts(), fraction, n_train, tokenizer, max_length=64, seed=1)
    assert len(picked) == expected
    if picked:
        assert expected / (expected + n_train) == pytest.approx(fraction, abs=0.1)
        replay_ids = {tuple(w.input_ids) for w in text_windows(replay_texts(), tokenizer, 64)}
        assert all(tuple(w.input_ids) in replay_ids for w in picked)


def test_training_without_replay_has_only_the_users_rows(tiny_config):
    from tunelab.train.run import run

    plain = run(tiny_config("eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
                            "train.max_steps=-1", "train.epochs=1"))
    assert plain.summary["train"]["steps"] == 5  # 20 rows / batch 4


def test_replay_adds_general_text_steps(tiny_config, tmp_path):
    from tunelab.train.run import run

    mixed = run(tiny_config("eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
                            "train.max_steps=-1", "train.epochs=1", "data.replay_fraction=0.5",
                            f"output_dir={tmp_path / 'mixed'}"))
    assert mixed.summary["train"]["steps"] == 10  # 20 rows + 20 replay windows, batch 4


def test_probe_is_measured_on_the_base_model_before_and_the_tuned_one_after(tiny_config):
    from tunelab.eval.cli import load_for_eval
    from tunelab.precision import autocast
    from tunelab.inputs import open_run
    from tunelab.train.run import run

    config = tiny_config("eval.few_shot_k=0", "eval.train_sample=0", "train.learning_rate=1e-2")
    result = run(config)
    f = result.summary["forgetting"]
    measured = {}
    used = open_run(result.run_dir).config  # the complete config the run resolved (task=auto chose sft)
    for name, run_dir in (("base", None), ("tuned", result.run_dir)):
        tokenizer, model = load_for_eval(used, run_dir)
        with autocast(used.train.precision):  # as the run measures it
            measured[name] = forgetting.measure(model, tokenizer, config.eval.batch_size)
    base, tuned = measured["base"], measured["tuned"]
    assert f["questions"] == 20
    assert f["perplexity_before"] == pytest.approx(base["perplexity"], rel=1e-5)
    assert f["accuracy_before"] == base["accuracy"]
    assert f["perplexity_after"] == pytest.approx(tuned["perplexity"], rel=1e-5)
    assert f["accuracy_after"] == tuned["accuracy"]
    assert abs(f["perplexity_after"] - f["perplexity_before"]) > 1e-3 * f["perplexity_before"]  # training moved it
