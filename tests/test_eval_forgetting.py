"""The forgetting probe: shipped data, the comparison and its flag, replay; and full vs LoRA on the real model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.data.general import probe_questions, probe_texts, replay_texts
from tunelab.eval import forgetting
from tunelab.scoring.metrics import normalize
from tunelab.tasks.lm import replay_examples, text_windows


def test_probe_data_ships_with_the_package():
    texts, replay, questions = probe_texts(), replay_texts(), probe_questions()
    assert len(texts) >= 6 and sum(map(len, texts)) > 2000
    assert len(questions) == 351 and len({q["question"] for q in questions}) == 351
    assert all(q["question"].endswith("?") and q["answers"] for q in questions)
    assert all(normalize(a) for q in questions for a in q["answers"])  # an empty answer would match anything
    assert not set(texts) & set(replay)  # replay must never rehearse the probe's own text


def test_forgetting_settings_read_the_old_forms_and_name_the_split_threshold():
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    def questions(value: str) -> int:
        return load_config(None, ["data.train=x.jsonl", f"eval.forgetting_questions={value}"]).eval.forgetting_questions

    assert (questions("true"), questions("false"), questions("50")) == (200, 0, 50)
    with pytest.raises(ConfigError, match="forgetting_threshold was split in two: set forgetting_perplexity_threshold"):
        load_config(None, ["data.train=x.jsonl", "eval.forgetting_threshold=0.2"])


@pytest.mark.parametrize("output, ok", [
    ("The capital of France is Paris.", True), ("paris", True), ("Parisian food is great", False),
    ("A day has 24 hours.", True), ("It has 124 hours", False)])
def test_answers_are_matched_as_whole_words(output, ok):
    answers = ["Paris"] if "ari" in output.lower() else ["24"]
    assert forgetting.answered(output, answers) is ok


def probe(window_losses: list[float], right: list[int]) -> dict:
    """What `forgetting.measure` returns, from each 100-token window's mean loss and each question's outcome."""
    import math

    from tunelab.scoring.rows import RowValues, exp_ratio

    units = np.column_stack([np.asarray(window_losses) * 100, np.full(len(window_losses), 100.0)])
    perplexity = RowValues(list(range(len(window_losses))), units, exp_ratio)
    return {"perplexity": math.exp(sum(window_losses) / len(window_losses)), "perplexity_rows": perplexity,
            "accuracy": sum(right) / len(right), "questions": len(right),
            "question_rows": RowValues.means(list(range(len(right))), right, outcomes=True)}


# each window's loss: windows differ far more than a tune moves them
BASE_WINDOWS = [2.0, 3.5, 2.5, 4.0, 3.0, 2.8, 3.2, 3.6, 2.2, 3.9, 2.6, 3.1]


def test_each_measure_has_its_own_threshold_and_interval():
    base = probe(BASE_WINDOWS, [1] * 60 + [0] * 40)
    # every window 0.12 nats worse: perplexity +12.7%, the same on every window, so far beyond its noise
    worse_text = forgetting.compare(base, probe([w + 0.12 for w in BASE_WINDOWS], [1] * 60 + [0] * 40), 0.1, 0.05)
    assert worse_text["perplexity_change"] == pytest.approx(math.exp(0.12) - 1)
    low, high = worse_text["perplexity_interval"]
    assert low == pytest.approx(high, abs=1e-6) and worse_text["perplexity_flagged"] and worse_text["flagged"]
    assert not worse_text["accuracy_flagged"] and worse_text["accuracy_interval"] == [0.0, 0.0]
    assert "data.replay_fraction" in worse_text["remedies"][0]
    # +12.7% on average, but +60% on one window and 0 on the others: beyond the threshold, not beyond noise
    uneven = [w + (12 * 0.12 if i == 0 else 0.0) for i, w in enumerate(BASE_WINDOWS)]
    spread = forgetting.compare(base, probe(uneven, [1] * 60 + [0] * 40), 0.1, 0.05)
    assert spread["perplexity_change"] > 0.1 and spread["perplexity_interval"][0] <= 0
    assert not spread["perplexity_flagged"]


@pytest.mark.parametrize("after, flagged", [
    # 10 questions lost, 2 gained of 100: -8 points, McNemar p = 2 P(X <= 2 | 12) = 0.039: clear, past 5 points
    ([1] * 50 + [0] * 10 + [1] * 2 + [0] * 38, True),
    # 4 lost, 0 gained: -4 points, within the 5-point threshold (and within noise: p = 2 * 0.5^4 = 0.125)
    ([1] * 56 + [0] * 4 + [0] * 40, False),
    # 6 lost, 6 gained: no change
    ([1] * 54 + [0] * 6 + [1] * 6 + [0] * 34, False)])
def test_question_accuracy_is_flagged_past_its_threshold_and_its_noise(after, flagged):
    base = probe(BASE_WINDOWS, [1] * 60 + [0] * 40)  # the base's own answers: 60 right, 40 wrong
    found = forgetting.compare(base, probe(BASE_WINDOWS, after), 0.1, 0.05)
    assert found["accuracy_flagged"] is flagged and found["flagged"] is flagged
    assert found["forgotten"] + found["learned"] == sum(a != b for a, b in zip([1] * 60 + [0] * 40, after))


def test_mcnemar_on_the_probe_matches_the_hand_computed_test():
    base = probe(BASE_WINDOWS, [1] * 60 + [0] * 40)
    found = forgetting.compare(base, probe(BASE_WINDOWS, [1] * 50 + [0] * 10 + [1] * 2 + [0] * 38), 0.1, 0.05)
    assert (found["forgotten"], found["learned"]) == (10, 2)
    assert found["accuracy_p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)  # 2 P(X <= 2), X ~ Bin(12, 1/2)
    assert found["accuracy_change"] == pytest.approx(-0.08)
    low, high = found["accuracy_interval"]
    assert low < -0.08 < high < 0  # clear: the interval excludes no change


def test_probe_windows_cover_every_token(tokenizer):
    windows = text_windows(["word " * 300], tokenizer, window=100)
    total = len(tokenizer("word " * 300)["input_ids"]) + 1
    assert [len(w.input_ids) for w in windows] == [100] * (total // 100) + ([total % 100] if total % 100 else [])
    assert all(w.labels == w.input_ids for w in windows)


@pytest.mark.parametrize("fraction, n_train, expected", [(0.0, 40, 0), (0.2, 40, 10), (0.5, 40, 40), (0.5, 3, 3)])
def test_replay_makes_up_the_asked_share_of_training(tokenizer, fraction, n_train, expected):
    picked = replay_examples(replay_texts(), fraction, n_train, tokenizer, max_length=64, seed=1)
    assert len(picked) == expected
    replay_ids = {tuple(w.input_ids) for w in text_windows(replay_texts(), tokenizer, 64)}
    assert all(tuple(w.input_ids) in replay_ids for w in picked)


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_the_prepared_training_mix_holds_the_asked_share_of_replay(tiny_config, tokenizer, fraction):
    """Counted in what the trainer gets: rows that are general-text windows over all training rows."""
    from tunelab.data import load_dataset
    from tunelab.events import Events
    from tunelab.tasks import get_task

    config = tiny_config(f"data.replay_fraction={fraction}", "train.max_length=64")
    train = load_dataset(config.data.train, "auto")
    prepared = get_task("sft").prepare(config, tokenizer, train, load_dataset(config.data.eval, "auto"), Events())
    replay_ids = {tuple(w.input_ids) for w in text_windows(replay_texts(), tokenizer, 64)}
    replayed = sum(tuple(row["input_ids"]) in replay_ids for row in prepared.train)
    assert replayed / len(prepared.train) == pytest.approx(fraction, abs=0.02)
    assert len(prepared.train) - replayed == len(train.rows)  # every user row is still there


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
    assert f["questions"] == 200
    assert f["perplexity_before"] == pytest.approx(base["perplexity"], rel=1e-5)
    assert f["accuracy_before"] == base["accuracy"]
    assert f["perplexity_after"] == pytest.approx(tuned["perplexity"], rel=1e-5)
    assert f["accuracy_after"] == tuned["accuracy"]
    assert abs(f["perplexity_after"] - f["perplexity_before"]) > 1e-3 * f["perplexity_before"]  # training moved it
