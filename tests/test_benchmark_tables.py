"""The README's measured tables render what the runs measured (benchmarks/paradigms_table.py, tables.py),
and every benchmark `make bench` runs at least starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import paradigms_table
import tables

DISTILL = {"row": "distill", "args": ["examples/distill.yaml"], "model": "/cache/students/model-15-layers-x",
           "method": "full", "metrics": ["exact_match", "token_f1"],
           "before": {"exact_match": 0.0, "token_f1": 0.0}, "after": {"exact_match": 0.5, "token_f1": 0.75,
                                                                    "gap_closed": 0.25, "speedup": 1.5},
           "teacher": {"metrics": {"exact_match": 0.9}},
           "forgetting": {"perplexity_change": 0.125, "accuracy_before": 1.0, "accuracy_after": 0.5,
                          "accuracy_change": -0.5},
           "train": {"seconds": 12.4}, "resources": {"peak_rss_bytes": 3 * 2**30}}


def test_a_paradigm_row_shows_its_own_metrics_and_what_was_measured_beside_it():
    row = paradigms_table.row(DISTILL)
    assert row[:3] == ("distill", "model-15-layers-x, full", "exact_match 0.0% → 50.0%; token_f1 0.0% → 75.0%")
    assert row[3] == ("gap_closed 25.0%; speedup 1.5; teacher exact_match 90.0%; general ppl +12.5%; "
                      "general questions 100% → 50%")
    assert row[4:] == ("12", "3,072", "`tunelab run examples/distill.yaml`")


def test_a_failed_row_says_so_and_the_exit_status_is_1(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    (tmp_path / "README.md").write_text("intro\n<!-- paradigms-table:start -->\nold\n<!-- paradigms-table:end -->\nrest\n")
    failed = {"row": "rlhf", "args": ["examples/rlhf.yaml"], "error": "error: boom"}
    text = paradigms_table.table([DISTILL, failed])
    assert "| rlhf |  | failed: error: boom |" in text
    assert tables.publish(text, str(tmp_path / "out.md"), "paradigms-table", [DISTILL, failed]) == 1
    assert (tmp_path / "out.md").read_text() == text
    readme = (tmp_path / "README.md").read_text()
    assert readme == f"intro\n<!-- paradigms-table:start -->\n{text}<!-- paradigms-table:end -->\nrest\n"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py")))
def test_each_benchmark_starts(script):
    """`make bench` runs every script: each must at least import and parse its arguments."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
