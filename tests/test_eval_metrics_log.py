"""metrics.jsonl: one reader beside its writer, used by the diagnosis, the report and resume."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.eval.diagnosis import Point, read_curves
from tunelab.rundir import MetricsLog, RunDir, read_metrics

RECORDS = [{"step": 1, "epoch": 0.5, "train_loss": 2.0}, {"step": 2, "epoch": 1.0, "train_loss": 1.5},
           {"step": 2, "epoch": 1.0, "eval_loss": 1.8, "perplexity": 6.05, "eval_loss_se": 0.1}]


@pytest.fixture
def killed_run(tmp_path):
    """A metrics.jsonl whose last append was cut short by a kill."""
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for record in RECORDS:
        log.append(record)
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "epoch": 1.5, "train_lo')
    return log.path


def test_reads_back_what_the_writer_wrote_and_drops_a_torn_last_line(killed_run):
    assert read_metrics(killed_run) == RECORDS
    assert read_metrics(killed_run.parent / "absent.jsonl") == []


def test_a_damaged_line_before_the_last_is_an_error_naming_the_line(killed_run):
    lines = killed_run.read_text().splitlines()
    killed_run.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(TunelabError, match=r'metrics.jsonl:2: expected a JSON object with an integer "step"'):
        read_metrics(killed_run)


def test_curves_of_a_killed_run(killed_run):
    train, held = read_curves(killed_run)
    assert train == [Point(1, 2.0, None, 0.5), Point(2, 1.5, None, 1.0)]
    assert held == [Point(2, 1.8, 0.1, 1.0)]


def test_resume_trims_to_the_checkpoint_step_and_drops_the_torn_line(killed_run):
    RunDir(killed_run.parent).trim_metrics(1)
    assert killed_run.read_text() == '{"step": 1, "epoch": 0.5, "train_loss": 2.0}\n'


def test_the_report_reads_a_killed_runs_curves(killed_run):
    from tunelab.eval.report_html import curves_png, metric_curves

    assert metric_curves(killed_run.parent) == {}  # no percentage metric was validated
    assert curves_png(killed_run.parent, {}).startswith("iVBOR")  # a PNG, base64


def test_a_run_shorter_than_logging_steps_logs_its_last_step(tiny_config):
    """train.max_steps=2 with a log every 5 steps wrote no metrics.jsonl, the bar said `loss -` throughout and the
    report's loss curve was empty."""
    from tunelab.train.run import run

    events = []
    result = run(tiny_config("train.max_steps=2", "train.logging_steps=5", "eval.generate=false",
                             "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0"),
                 on_event=events.append)
    logged = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in logged] == [2]
    steps = [e.fields for e in events if e.kind == "step"]
    assert [e["step"] for e in steps] == [1, 2] and steps[-1]["loss"] == logged[0]["train_loss"]
    train, _ = read_curves(result.run_dir / "metrics.jsonl")
    assert [p.step for p in train] == [2]
    assert '<img alt="loss curves"' in (result.run_dir / "report.html").read_text()
