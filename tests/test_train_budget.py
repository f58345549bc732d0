"""train.epochs=auto: a budget from the data size, validation on the task's metric, early stopping."""

from __future__ import annotations

import pytest

from tunelab.tasks import get_task
from tunelab.train.budget import MAX_EPOCHS, MIN_EPOCHS, MIN_METRIC_ROWS, auto_epochs, resolve_epochs


@pytest.mark.parametrize("rows, epochs", [(10, MAX_EPOCHS), (200, 5), (240, 5), (500, 2), (100_000, MIN_EPOCHS)])
def test_small_data_gets_more_passes_within_bounds(rows, epochs):
    assert auto_epochs(rows) == epochs


@pytest.mark.parametrize("validation_rows, metric", [(MIN_METRIC_ROWS, "exact_match"),
                                                     (MIN_METRIC_ROWS - 1, "eval_loss")])
def test_auto_is_the_default_and_sets_schedule_patience_and_metric(tiny_config, validation_rows, metric):
    config = tiny_config("train.max_steps=-1", "train.batch_size=4", "eval.metrics=[exact_match]")
    assert config.train.epochs == "auto"
    settings, budget = resolve_epochs(config, get_task("sft"), 40, validation_rows)
    assert budget == {"epochs": 8.0, "max_steps": 80, "eval_steps": 5, "patience": 2, "metric": metric}
    assert settings["train.early_stopping_patience"] == 2 and settings["train.best_metric"] == metric
    assert config.train.epochs == "auto" and config.train.early_stopping_patience == 0  # read, never written


def test_what_the_user_set_is_kept(tiny_config):
    config = tiny_config("train.max_steps=-1", "train.eval_steps=3", "train.best_metric=eval_loss",
                         "train.early_stopping_patience=5")
    budget = resolve_epochs(config, get_task("sft"), 40, 4)[1]
    assert (budget["eval_steps"], budget["patience"], budget["metric"]) == (3, 5, "eval_loss")
    fixed = tiny_config("train.epochs=2", "train.max_steps=-1")
    assert resolve_epochs(fixed, get_task("sft"), 40, 0) == ({}, None)
    steps = tiny_config()  # max_steps=4: epochs is not read
    assert resolve_epochs(steps, get_task("sft"), 40, 0) == ({"train.epochs": 1.0}, None)


def test_an_auto_run_validates_stops_early_and_keeps_the_best(tiny_config):
    from tunelab.train.run import run

    result = run(tiny_config("train.max_steps=-1", "eval.generate=false", "eval.forgetting_probe=false",
                             "eval.few_shot_k=0", "eval.train_sample=0", "train.learning_rate=0.9"))
    budget, stopping = result.summary["train"]["auto_budget"], result.summary["early_stopping"]
    assert budget["epochs"] == MAX_EPOCHS and budget["metric"] == "eval_loss"
    assert stopping["stopped_early_at"] is not None  # a rate of 0.9 wrecks the model: validation stops improving
    assert result.summary["train"]["steps"] < budget["max_steps"]
    assert stopping["best_step"] < stopping["final_step"] and stopping["restored"]


def test_early_stopping_validates_on_rows_set_aside_from_train_never_on_held_out(tiny_config, monkeypatch):
    import json

    from tunelab.train.run import run

    task, seen = get_task("sft"), []
    validate = task.validate
    monkeypatch.setattr(task, "validate", lambda model, tok, held, *a, **k: seen.append(held) or validate(model, tok, held, *a, **k))
    config = tiny_config("train.max_steps=-1", "train.epochs=1", "train.early_stopping_patience=2",
                         "train.eval_steps=1", "eval.generate=false", "eval.forgetting_probe=false",
                         "eval.few_shot_k=0", "eval.train_sample=0")
    result = run(config)
    data = json.loads((result.run_dir / "data.json").read_text())
    assert (data["train"]["rows"], data["validation_rows"]) == (18, 2)  # 10% of the 20 training rows
    assert result.summary["early_stopping"]["validation_rows"] == 2
    assert seen and all(len(held.encoded) == 2 for held in seen)  # every validation: the 2 rows, not the held-out set


@pytest.mark.parametrize("overrides, carved", [(("train.max_steps=-1",), True),  # epochs=auto
                                                (("train.max_steps=-1", "train.epochs=2"), False),
                                                (("train.max_steps=4",), False),
                                                (("train.max_steps=4", "train.early_stopping_patience=1"), True)])
def test_rows_are_set_aside_only_when_the_run_stops_early(tiny_config, overrides, carved):
    from tunelab.data import load_dataset
    from tunelab.inputs import validation_split

    config = tiny_config(*overrides)
    train, validation = validation_split(config, load_dataset(config.data.train, "auto", {}))
    assert (len(train.rows), validation is not None) == ((18, True) if carved else (20, False))
