"""tunelab sweep: the search space is checked before any trial; a killed sweep resumes without repeating
finished trials; two workers on one storage share the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tunelab.errors import ConfigError
from tunelab.events import Event, Events
from tunelab.experiments.sweep import FINISHED, SweepOptions, pruning_listener, sweep
from tests.conftest import write_jsonl

QUICK = ["model=tiny-random-llama", "train.batch_size=4", "train.max_steps=2", "train.max_length=48",
         "train.eval_steps=1", "eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0",
         "eval.train_sample=0", "train.save_steps=0"]


@pytest.fixture
def sweep_setup(tmp_path, chat_rows):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows[:20])
    held = write_jsonl(tmp_path / "eval.jsonl", chat_rows[20:])
    overrides = [f"data.train={train}", f"data.eval={held}", *QUICK]

    def space(text: str) -> Path:
        path = tmp_path / "space.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return tmp_path, overrides, space


def raw_of(overrides):
    from tunelab.config import load_raw

    return load_raw(None, overrides)


@pytest.mark.parametrize("text, expected", [
    ("lora.rank: [4, 8]\n", '"lora.rank": not a config key (did you mean "lora.r"?)'),
    ("train.learning_rate: {low: 1.0e-2, high: 1.0e-4}\n", "low 0.01 is above high 0.0001; train.learning_rate "
                                                             "allows a number > 0 and < 1"),
    ("train.learning_rate: {low: 0, high: 1.0e-3, log: true}\n", "a log range needs low > 0, got 0"),
    ("lora.r: [8, 0]\n", '"lora.r": the value 0 is refused'),
    ("lora.dropout: {low: 0.0, high: 1.5}\n", "lora.dropout allows a number >= 0 and < 1"),
    ("train.lr_scheduler: [linear, cosinus]\n", "allows one of linear|cosine|constant|constant_with_warmup"),
])
def test_a_bad_space_fails_before_any_trial_naming_key_and_range(sweep_setup, text, expected):
    tmp_path, overrides, space = sweep_setup
    with pytest.raises(ConfigError) as err:
        sweep(raw_of(overrides), SweepOptions(space(text), trials=2, out_dir=tmp_path / "sw"))
    assert expected in str(err.value)
    assert not (tmp_path / "sw").exists()  # no study, no split, no trial


def test_a_good_space_is_accepted_with_ints_floats_and_choices(sweep_setup):
    from tunelab.experiments.space import load_space

    _, overrides, space = sweep_setup
    dims = load_space(space("lora.r: {low: 2, high: 16, log: true}\ntrain.learning_rate: {low: 1.0e-4, high: 1.0e-2}\n"
                            "lora.alpha: [8, 16]\n"), raw_of(overrides))
    assert [(d.key, d.integer) for d in dims] == [("lora.r", True), ("train.learning_rate", False), ("lora.alpha", False)]


def sweep_command(tmp_path: Path, overrides: list[str], space: Path, trials: int, storage: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", "sweep", *overrides, "--space", str(space), "--trials", str(trials),
            "--out", str(tmp_path / "sw"), "--storage", storage, "--heartbeat", "1", "--metric", "eval_loss"]


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="run-sweep", storage=storage).get_trials()
    except KeyError:
        return []


def wait_for(condition, process, timeout=900.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, "the sweep ended before the moment the test waits for"
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_a_sweep_killed_mid_trial_resumes_without_repeating_finished_trials(sweep_setup):
    tmp_path, overrides, space = sweep_setup
    path = space("train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker = subprocess.Popen(sweep_command(tmp_path, overrides, path, 3, storage), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = lambda: [t.state.name for t in trials_of(storage)]  # noqa: E731
    # killed while a trial runs after one finished (the second or the third: short trials can outrun the polling)
    wait_for(lambda: (s := states()) and s[0] == "COMPLETE" and s[-1] == "RUNNING", worker)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    first_summary = tmp_path / "sw" / "trial-000" / "summary.json"
    finished_at = first_summary.stat().st_mtime_ns
    *done, killed = trials_of(storage)

    summary = sweep(raw_of(overrides), SweepOptions(path, trials=3, out_dir=tmp_path / "sw", storage=storage,
                                                    heartbeat=1, metric="eval_loss"))
    trials, k = trials_of(storage), len(done)
    assert all(t.state in FINISHED for t in trials[:k]) and trials[k].state.name == "FAIL"  # the killed one failed
    assert len(trials) == 4 and all(t.state in FINISHED for t in trials[k + 1:])  # completed or pruned
    # ... and run again with its own parameters (before or after a new trial, as its heartbeat goes stale)
    assert [t.params for t in trials[k + 1:]].count(killed.params) == 1
    assert first_summary.stat().st_mtime_ns == finished_at  # the finished trial was not repeated
    assert summary["states"]["complete"] + summary["states"]["pruned"] == 3
    assert summary["best"]["validation"] == min(t.value for t in trials if t.value is not None)
    assert summary["best"]["held_out"] is not None and (tmp_path / "sw" / "best.yaml").is_file()
    best_yaml = (tmp_path / "sw" / "best.yaml").read_text()
    assert "max_steps: 2" in best_yaml and "early_stopping_patience: 0" in best_yaml
    assert str(tmp_path / "train.jsonl") in best_yaml  # the full training rows, an absolute path


def test_two_workers_on_one_storage_share_the_study(sweep_setup):
    tmp_path, overrides, space = sweep_setup
    path = space("train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\nlora.r: [2, 4, 8]\n")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen(sweep_command(tmp_path, overrides, path, 4, storage), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=1800) == 0, w.stderr.read().decode()[-2000:]
    trials = trials_of(storage)
    finished = [t for t in trials if t.state in FINISHED]
    assert 4 <= len(finished) <= 5  # each worker may start one trial while the last ones run elsewhere
    assert {t.user_attrs["worker"].split(":")[1] for t in finished} == {str(w.pid) for w in workers}
    run_dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(run_dirs)) == len(run_dirs)
    assert all((Path(t.user_attrs["run_dir"]) / "summary.json").is_file() for t in finished if t.state.name == "COMPLETE")
    best = list((tmp_path / "sw").glob("best-trial-*"))
    assert len(best) == 1  # the held-out set was scored once, by one worker


def test_the_held_out_run_trains_the_steps_validation_chose_without_early_stopping():
    from optuna.trial import create_trial

    from tunelab.experiments.sweep import fixed_length, steps_chosen

    assert steps_chosen({"early_stopping": {"best_step": 30}, "train": {"steps": 50}}) == 30
    assert steps_chosen({"early_stopping": None, "train": {"steps": 50}}) == 50
    trial = create_trial(value=1.0, user_attrs={"steps": 30})
    assert fixed_length(trial) == {"train.max_steps": 30, "train.early_stopping_patience": 0}
    assert fixed_length(None) == {} and fixed_length(create_trial(value=1.0)) == {}


def test_a_validation_behind_the_pruner_stops_the_run_with_trial_pruned():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial, seen = study.ask(), []
    listen = pruning_listener(trial, "eval_loss", True, Events(seen.append))
    listen(Event("validation", "info", "", {"step": 1, "metrics": {"eval_loss": 0.5}}))
    listen(Event("step", "progress", "", {"step": 2, "loss": 9.0}))  # not a validation: not reported
    with pytest.raises(optuna.TrialPruned, match="eval_loss 5 at step 3"):
        listen(Event("validation", "info", "", {"step": 3, "metrics": {"eval_loss": 5.0}}))
    assert [e.kind for e in seen] == ["validation", "step", "validation", "trial_pruned"]
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].intermediate_values == {1: 0.5, 3: 5.0}
    unpruned = study.ask()
    pruning_listener(unpruned, "eval_loss", False, Events())(
        Event("validation", "info", "", {"step": 3, "metrics": {"eval_loss": 5.0}}))


def test_score_default_reuses_the_best_score_when_the_default_trial_won(sweep_setup):
    tmp_path, overrides, space = sweep_setup
    summary = sweep(raw_of(overrides), SweepOptions(space("lora.r: [8, 16]\n"), trials=1, out_dir=tmp_path / "sw",
                                                    score_default=True, metric="eval_loss"))
    assert (tmp_path / "sw" / "best-trial-000").is_dir()  # trial 0 is the unchanged config
    assert not (tmp_path / "sw" / "default-config").exists()  # the same config is not trained twice
    assert summary["default"]["held_out"] == summary["best"]["held_out"] is not None
    assert summary["default"]["run_dir"] == summary["best"]["run_dir"]


def sweep_study(values: list[float]) -> optuna.Study:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        study.add_trial(create_trial(value=value, params={"train.learning_rate": 1e-4 * (i + 1)},
                                     distributions={"train.learning_rate": FloatDistribution(1e-5, 1e-2)}))
    return study


@pytest.mark.parametrize("values, drawn, note", [
    ([0.0, 0.0], False, "2 completed trial(s), and it needs at least 3"),
    ([0.0, 0.0, 0.0], False, "every completed trial scored 0, so no parameter mattered"),
    ([0.1, 0.5, 0.3], True, None),
])
def test_parameter_importance_is_drawn_only_from_trials_that_can_show_it(tmp_path, values, drawn, note):
    from tunelab.experiments.sweep_report import write_sweep_report

    study = sweep_study(values)
    summary = {"study": "s", "metric": "accuracy", "direction": "maximize", "space": {"train.learning_rate": "x"},
               "best": {"trial": 0, "params": {}, "validation": max(values), "held_out": 0.0},
               "default": {"validation": None, "held_out": None}}
    write_sweep_report(tmp_path, study, summary)
    assert (tmp_path / "importance.png").exists() == drawn and (tmp_path / "history.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert (note in report) if note else "Parameter importance is not shown" not in report


def test_a_time_budget_starts_no_trial_that_would_end_past_it():
    import time
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    from tunelab.experiments.sweep import out_of_time

    begun = datetime(2026, 1, 1, 12, 0, 0)
    done = [SimpleNamespace(datetime_start=begun, datetime_complete=begun + timedelta(seconds=100)),
            SimpleNamespace(datetime_start=begun, datetime_complete=None)]  # one running: no length yet
    study = SimpleNamespace(get_trials=lambda deepcopy=False: done)
    started = time.monotonic() - 50  # 50 s spent; the longest trial took 100 s
    assert out_of_time(study, SweepOptions(None, time_budget=140), started)
    assert not out_of_time(study, SweepOptions(None, time_budget=160), started)
    assert not out_of_time(study, SweepOptions(None), started)  # no budget: the count alone decides
    empty = SimpleNamespace(get_trials=lambda deepcopy=False: [])
    assert not out_of_time(empty, SweepOptions(None, time_budget=1), started)  # the first trial always runs


def test_a_list_choice_travels_through_optuna_and_a_trial_from_an_older_study_keeps_its_params():
    from types import SimpleNamespace

    from tunelab.experiments.space import Dimension
    from tunelab.experiments.sweep import chosen_values

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    dim = Dimension("lora.target_modules", choices=[["q_proj", "v_proj"], "all-linear"])
    picked = [dim.suggest(study.ask()) for _ in range(12)]
    assert {str(p) for p in picked} == {"['q_proj', 'v_proj']", "all-linear"}
    old = SimpleNamespace(params={"lora.r": 8}, user_attrs={})
    assert chosen_values(old) == {"lora.r": 8}
    assert chosen_values(SimpleNamespace(params={"remedy": "x"}, user_attrs={"values": {}})) == {}
