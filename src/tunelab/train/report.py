"""report.md: the before/after table a person reads first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.train.rundir import write_atomic

LABELS = {"eval_loss": "eval loss", "perplexity": "perplexity", "exact_match": "exact match",
          "token_f1": "token F1"}
PERCENT = {"exact_match", "token_f1"}


def fmt(name: str, value: float) -> str:
    return f"{100 * value:.1f}%" if name in PERCENT else f"{value:.4f}"


def delta(name: str, before: float, after: float) -> str:
    diff = after - before
    return f"{100 * diff:+.1f} pts" if name in PERCENT else f"{diff:+.4f}"


def comparison_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    before, after = summary["before"], summary["after"]
    return [(LABELS.get(k, k), fmt(k, before[k]), fmt(k, after[k]), delta(k, before[k], after[k]))
            for k in before if k in after]


def write_report(run_dir: Path, summary: dict[str, Any], n_samples: int = 5) -> None:
    t = summary["train"]
    lines = [
        f"# tunelab run: {run_dir.name}", "",
        f"Model `{summary['model']}`, method `{summary['method']}`, task `{summary['task']}`; "
        f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained "
        f"({100 * summary['trainable_params'] / summary['total_params']:.2f}%).", "",
        f"Training: {t['steps']} steps in {t['seconds']:.0f} s, {t['tokens']:,} tokens "
        f"({t['tokens_per_second']:.0f} tokens/s).", "",
        "## Held-out results", "", "| metric | before | after | change |", "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in comparison_rows(summary)]
    lines += _samples(run_dir, n_samples)
    write_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def _samples(run_dir: Path, n: int) -> list[str]:
    path = run_dir / "samples.jsonl"
    if not path.exists() or not path.stat().st_size:
        return []
    out = ["", "## Held-out examples", ""]
    for line in path.read_text(encoding="utf-8").splitlines()[:n]:
        s = json.loads(line)
        out += [f"**Prompt:** {_one_line(s['prompt'])}", "",
                f"- reference: `{_one_line(s['reference'])}`", f"- before: `{_one_line(s['before'])}`",
                f"- after: `{_one_line(s['after'])}`", ""]
    return out


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[:limit] + "…"
