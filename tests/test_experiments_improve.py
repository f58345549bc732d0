"""tunelab improve: each finding kind maps to its remedies; the search never reads the held-out set; a
finished study asked again continues; the improved run's config.yaml reproduces it; bad input is one line."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.config import load_config, load_raw
from tunelab.experiments.improve import ImproveOptions, improve
from tunelab.experiments.remedies import (FORGETTING, OVERFITTING, TOO_LITTLE_DATA, UNDERFITTING, findings,
                                          remedies_for)
from tests.conftest import write_jsonl

BASE = ["model=tiny-random-llama", "train.batch_size=4", "train.max_length=48", "train.precision=fp32",
        "eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0", "train.save_steps=0"]


def remedies_of(kinds, *overrides, files=None):
    raw = load_raw(None, ["data.train=x.jsonl", *overrides])
    config = load_config(None, ["data.train=x.jsonl", *overrides])
    return {remedy.name: {d.key: d.describe() for d in dims} for remedy, dims in remedies_for(kinds, raw, config, files)}


def test_each_finding_kind_maps_to_its_remedies_in_the_runs_own_terms():
    lr = ["train.learning_rate=0.001", "lora.r=16", "train.epochs=2", "train.eval_steps=4"]
    assert remedies_of([OVERFITTING], *lr) == {
        "early stopping": {"train.early_stopping_patience": "one of 1, 2, 3", "train.eval_steps": "one of 2"},
        "lower learning rate": {"train.learning_rate": "0.0001 to 0.0007 (log scale)"},
        "smaller rank": {"lora.r": "one of 4, 8"},
        "weight decay": {"train.weight_decay": "0.01 to 0.2 (log scale)"},
        "lora dropout": {"lora.dropout": "0.05 to 0.3"}}
    assert remedies_of([UNDERFITTING], *lr) == {
        "more steps": {"train.epochs": "3 to 8"},  # max_steps=-1 is no base for a multiple
        "higher learning rate": {"train.learning_rate": "0.0015 to 0.005 (log scale)"},
        "larger rank": {"lora.r": "one of 32, 64"},
        "full fine-tuning": {"method": "one of full", "train.learning_rate": "1e-05 to 0.0001 (log scale)"}}
    assert remedies_of([FORGETTING], *lr) == {
        "replay general text": {"data.replay_fraction": "0.1 to 0.4"},
        "lower learning rate": {"train.learning_rate": "0.0001 to 0.0007 (log scale)"},
        "smaller rank": {"lora.r": "one of 4, 8"}}
    assert remedies_of([TOO_LITTLE_DATA], *lr) == {}


def test_remedies_leave_out_keys_the_run_does_not_read_and_dedupe_across_findings():
    full = remedies_of([OVERFITTING, FORGETTING], "method=full", "train.learning_rate=2e-5", "train.max_steps=40")
    assert list(full) == ["early stopping", "lower learning rate", "weight decay", "replay general text"]
    assert remedies_of([UNDERFITTING], "train.max_steps=40")["more steps"] == {"train.max_steps": "60 to 160"}


def test_findings_read_the_diagnosis_forgetting_and_row_count():
    summary = {"diagnosis": {"verdict": "overfitting", "findings": [
        {"diagnosis": "overfitting", "evidence": "exact match 91% on train rows vs 48% held out"}]},
        "forgetting": {"flagged": True, "perplexity_change": 0.15}}
    kinds = [f["kind"] for f in findings(summary, train_rows=120)]
    assert kinds == [OVERFITTING, FORGETTING, TOO_LITTLE_DATA]
    assert [f["kind"] for f in findings(summary, train_rows=5000)] == [OVERFITTING, FORGETTING]
    good = {"diagnosis": {"verdict": "good fit", "findings": []}, "forgetting": {"flagged": False}}
    assert findings(good, 100) == []


def fake_run(path: Path, summary: dict | None, seconds: float = 100.0) -> Path:
    """A finished run directory as `tunelab run` leaves it, without training one."""
    path.mkdir(parents=True)
    (path / "model").mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump({"data": {"train": str(path / "t.jsonl")},
                                                      "model": "tiny-random-llama"}), encoding="utf-8")
    (path / "status.json").write_text(json.dumps({"v": 1, "state": "succeeded", "started_at": 1000.0,
                                                  "finished_at": 1000.0 + seconds}), encoding="utf-8")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (path / "data.json").write_text(json.dumps({"train": {"rows": 50}}), encoding="utf-8")
    return path


UNDERFIT = {"diagnosis": {"verdict": "underfitting", "findings": [{"diagnosis": "underfitting", "evidence": "x"}],
                          "suggestions": []}, "after": {"eval_loss": 1.0}}


@pytest.mark.parametrize("summary, args, expected", [
    ({"after": {}}, [], "holds no diagnosis to act on"),
    ({"diagnosis": {"verdict": "good fit", "findings": [], "suggestions": []}}, [],
     'nothing to improve: the run was diagnosed "good fit" with no forgetting'),
    (UNDERFIT, ["--budget", "0"], "--budget: expected at least 1 remedy trial, got 0"),
    (UNDERFIT, ["--time-budget", "120"], "--time-budget 120: too small for one trial: the original run took 100 s"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, summary, args, expected):
    run = fake_run(tmp_path / "run", summary)
    assert main(["improve", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run-improve").exists()


def test_a_directory_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["improve", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def improved(tmp_path_factory, chat_rows_module):
    """An underfitting run of the tiny model (4 steps), improved with one remedy trial, while a spy records
    every opening of the held-out file and what improve was doing then."""
    tmp = tmp_path_factory.mktemp("improve")
    train = write_jsonl(tmp / "train.jsonl", chat_rows_module[:40])
    held = write_jsonl(tmp / "held.jsonl", chat_rows_module[40:])
    from tunelab.experiments import run_experiment

    run_experiment(load_config(None, [f"data.train={train}", f"data.eval={held}", f"output_dir={tmp / 'run'}",
                                      "train.max_steps=4", "eval.train_sample=8", *BASE]))
    phase, reads = ["search"], []
    real_open = builtins.open

    def spying_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file).resolve() == held.resolve():
            reads.append(phase[0])
        return real_open(file, *args, **kwargs)

    def listen(event):
        if event.kind == "scoring_held_out":
            phase[0] = "held-out scoring"

    builtins.open = spying_open
    try:
        summary = improve(tmp / "run", ImproveOptions(budget=1, metric="eval_loss", confirm_seeds=1), listen)
    finally:
        builtins.open = real_open
    return tmp, summary, reads


@pytest.fixture(scope="module")
def chat_rows_module():
    return [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(48)]


def test_the_search_never_reads_the_held_out_set(improved):
    tmp, summary, reads = improved
    assert summary["findings"][0]["kind"] == UNDERFITTING
    assert not summary["decision"]["kept_original"], summary["decision"]  # a lower loss: more steps or rate
    assert reads and set(reads) == {"held-out scoring"}  # read, but only once the winner was chosen


def test_improve_reports_each_remedy_and_the_held_out_once_with_intervals(improved):
    tmp, summary, _ = improved
    out = Path(summary["out_dir"])
    assert [r["remedy"] for r in summary["remedies"]][:1] == ["more steps"]
    assert summary["remedies"][0]["trials"] == 1 and summary["remedies"][1]["trials"] == 0
    held = summary["held_out"]
    assert held["improved"] < held["original"]  # eval_loss: the chosen config lowered it on held-out too
    loss = held["versus"]["eval_loss"]
    assert loss["low"] <= loss["difference"] <= loss["high"] and loss["rows"] == 8
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Remedies, on validation" in report and "## The chosen config, once on held-out" in report
    assert json.loads((out / "improve.json").read_text())["trials"] == 1


def test_the_improved_runs_config_reproduces_it(improved, tmp_path):
    from tunelab.experiments import run_experiment

    _, summary, _ = improved
    run = Path(summary["improved_run"])
    again = load_config(str(run / "config.yaml"), [f"output_dir={tmp_path / 'again'}"])
    assert again.train.max_steps == summary["decision"]["values"].get("train.max_steps", again.train.max_steps)
    assert run_experiment(again).summary["after"] == json.loads((run / "summary.json").read_text())["after"]
    best = yaml.safe_load((Path(summary["out_dir"]) / "best.yaml").read_text())
    kept = yaml.safe_load((run / "config.yaml").read_text())
    assert {**best, "output_dir": None} == {**kept, "output_dir": None}


def test_a_finished_improve_asked_again_continues_its_study(improved, capsys):
    tmp, summary, _ = improved
    assert main(["improve", str(tmp / "run"), "--budget", "1", "--metric", "eval_loss"]) == 0
    out = capsys.readouterr()
    assert "holds a finished improve study (2 trials); continuing it with 1 more" in out.out + out.err
    again = json.loads((Path(summary["out_dir"]) / "improve.json").read_text())
    assert again["trials"] == 2
    rows = [line.split(",") for line in (Path(summary["out_dir"]) / "trials.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows if r[1] in ("complete", "pruned")] == ["0", "1", "2"]
    assert {r[1] for r in rows} <= {"complete", "pruned", "waiting"}  # remedies still queued wait for the next


def fake_trial(tmp_path: Path, number: int, right: list[int], forgets: bool, default: bool = False):
    """A finished trial whose run directory holds its validation rows (after.json) and its probe's flag."""
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from tunelab.rundir import RunDir
    from tunelab.scoring.rows import RowValues, encode

    run = RunDir(tmp_path / f"trial-{number}")
    run.path.mkdir()
    run.write_after(encode({"rows": {"exact_match": RowValues.means(range(len(right)), right, outcomes=True)}}))
    run.write_summary({"forgetting": {"flagged": forgets}})
    return SimpleNamespace(number=number, value=sum(right) / len(right), state=TrialState.COMPLETE,
                           user_attrs={"run_dir": str(run.path), "default": default, "values": {}})


def test_for_forgetting_the_winner_must_not_forget_and_may_not_be_clearly_worse(tmp_path):
    from types import SimpleNamespace

    from tunelab.experiments.improve import choose

    reference = fake_trial(tmp_path, 0, [1] * 20, forgets=True, default=True)
    forgets_but_scores = fake_trial(tmp_path, 1, [1] * 20, forgets=True)
    spares = fake_trial(tmp_path, 2, [1] * 19 + [0], forgets=False)  # one row lost: no clear difference
    study = SimpleNamespace(get_trials=lambda deepcopy=False: [reference, forgets_but_scores, spares])
    original = SimpleNamespace(found=[{"kind": FORGETTING, "evidence": ""}])
    choice = choose(study, original, {}, "exact_match", tmp_path, ImproveOptions(confirm_seeds=0), None, 0.0)
    assert choice.best is spares and choice.validation["direction"] == "no clear difference"
    clearly_worse = fake_trial(tmp_path, 3, [1] * 10 + [0] * 10, forgets=False)
    study = SimpleNamespace(get_trials=lambda deepcopy=False: [reference, clearly_worse])
    assert choose(study, original, {}, "exact_match", tmp_path, ImproveOptions(confirm_seeds=0), None, 0.0).best is None


class WordTeacher:
    """Writes "Say the word wN." rows, and first a copy of the validation row "Say the number 6."."""

    name = "words"

    def __init__(self, model):
        self.asked = 0

    def chat(self, conversations, max_new_tokens, temperature, seed):
        replies = []
        for turns in conversations:
            if len(turns) == 1:  # asked for a new input
                self.asked += 1
                replies.append("Say the number 6." if self.asked == 1 else f"Say the word w{self.asked}.")
            else:  # asked to answer it
                asked = turns[-1]["content"]
                replies.append("The number is 6." if "6" in asked else f"The word is {asked.split()[-1][:-1]}.")
        return replies


def test_too_little_data_tries_synthetic_rows_from_the_fit_rows_never_the_validation_ones(tmp_path, chat_rows,
                                                                                          monkeypatch):
    from tunelab.events import Events
    from tunelab.experiments.improve_data import SYNTHETIC, synthetic_train

    monkeypatch.setattr("tunelab.data.teachers.LocalTeacher", WordTeacher)  # the pipeline, not a model's prose
    assert remedies_of([TOO_LITTLE_DATA], files=None) == {}  # offered once the rows are written
    (tmp_path / "data").mkdir()
    fit = write_jsonl(tmp_path / "data" / "train.jsonl", chat_rows[:6])
    validation = write_jsonl(tmp_path / "data" / "validation.jsonl", chat_rows[6:8])
    config = load_config(None, [f"data.train={fit}", "model=tiny-random-llama"])
    path = synthetic_train(config, tmp_path, fit, validation, Events())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[:6] == chat_rows[:6] and len(rows) == 12  # the fit rows, then as many new ones
    assert rows[6]["messages"][0]["content"] == "Say the word w2."  # the copy of a validation row was dropped
    assert not any(row in chat_rows[6:8] for row in rows)
    assert remedies_of([TOO_LITTLE_DATA], files={SYNTHETIC: str(path)}) == {
        "synthetic rows": {"data.train": f"one of {path}"}}


def test_the_held_out_run_of_synthetic_rows_drops_rows_that_repeat_held_out_ones(tmp_path, chat_rows):
    from tunelab.experiments.improve_data import held_out_train

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows[:10])
    held = write_jsonl(tmp_path / "held.jsonl", chat_rows[20:24])
    new = [{"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Teal."}]}]
    (tmp_path / "out" / "data").mkdir(parents=True)
    write_jsonl(tmp_path / "out" / "data" / "synthetic.jsonl", [*new, chat_rows[21]])  # one repeats a held-out row
    config = load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama"])
    values = held_out_train(config, tmp_path / "out")
    rows = [json.loads(line) for line in Path(values["data.train"]).read_text().splitlines()]
    assert rows == [*chat_rows[:10], *new]


def test_run_with_improve_hands_its_run_directory_and_budget_to_improve(tmp_path, chat_rows, monkeypatch):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows[:12])
    asked = []
    monkeypatch.setattr("tunelab.experiments.commands.run_improve",
                        lambda run_dir, args, console: asked.append((Path(run_dir), args.budget, args.time_budget)) or 0)
    assert main(["run", f"data.train={train}", f"output_dir={tmp_path / 'run'}", "train.max_steps=1", *BASE,
                 "eval.train_sample=0", "--improve", "--improve-budget", "3"]) == 0
    assert asked == [(tmp_path / "run", 3, None)]


def test_the_improve_report_carries_each_runs_line_against_prompting(tmp_path):
    """#36's verdict travels through improve: the original and the improved run each against their best prompting
    baseline, with the cost per answer, in the report's opening lines."""
    from tunelab.experiments.improve_report import intro

    said = "Prompting may be enough: exact match 95.0% 3-shot retrieved, 91.7% tuned (...)."
    summary = {"original_run": "runs/a", "findings": [{"kind": UNDERFITTING, "evidence": "loss falling"}],
               "metric": "exact_match", "direction": "maximize", "trials": 1, "seconds": 10.0,
               "decision": {"kept_original": False, "trial": 1, "remedy": "more steps", "values": {},
                            "validation": 0.9, "original_validation": 0.5, "note": "beyond noise"},
               "held_out": {"original": 0.5, "improved": 0.9, "original_prompting": said,
                            "improved_prompting": "Tuning beats the best prompting baseline, 3-shot retrieved: ..."},
               "improved_run": "runs/b"}
    lines = intro(summary, tmp_path)
    assert f"Against prompting, the original run: {said}" in lines
    assert any(line.startswith("Against prompting, the improved run: Tuning beats") for line in lines)
