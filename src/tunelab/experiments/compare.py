"""`tunelab compare`: several methods, base models or whole configs trained on one budget, side by side.

Entries made from one config (`--methods`, `--models`) share its data and get the same number of
optimizer steps at the same batch (so the same rows and training tokens; early stopping is off). Each
entry runs in its own process, so its peak memory and wall time are its own. The leaderboard shows the
held-out metric (mean and 95% interval over seeds), the forgetting change, trainable parameters,
artifact size, peak memory and time; a Pareto plot shows which entries no other beats on both metric and cost.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import dump_config, load_raw, validate_config
from tunelab.errors import ConfigError, RunAborted
from tunelab.eval.report import fmt, headline_metric, md_table
from tunelab.events import Events, Listener
from tunelab.experiments.pages import figure, save_png, write_pages
from tunelab.experiments.variants import variant_raw
from tunelab.rundir import RunDir, write_atomic, write_json
from tunelab.scoring.metrics import describe


@dataclass
class Entry:
    label: str
    raw: dict[str, Any]


def entries_from(raw: dict[str, Any] | None, methods: str | None, models: str | None, configs: list[Path] | None,
                 overrides: list[str]) -> list[Entry]:
    """One entry per method x model of the base config, or one per whole config (overrides applied to each)."""
    if configs:
        if methods or models:
            raise ConfigError("--configs compares whole configs; give --methods/--models with one base config instead")
        return [Entry(Path(c).stem, load_raw(c, overrides)) for c in configs]
    if raw is None or not (methods or models):
        raise ConfigError("compare: give a config and --methods a,b or --models a,b (or --configs a.yaml b.yaml)")
    method_list = names(methods) or [raw.get("method", "lora")]
    model_list = names(models) or [raw.get("model")]
    return [Entry(label(m, model, method_list, model_list), variant_raw(raw, {"method": m, **({"model": model} if model else {})}))
            for model in model_list for m in method_list]


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def label(method: str, model: str | None, methods: list[str], models: list[Any]) -> str:
    parts = ([method] if len(methods) > 1 or len(models) == 1 else []) + \
            ([Path(str(model)).name] if len(models) > 1 else [])
    return "-".join(parts)


def same_budget(entries: list[Entry], base: dict[str, Any] | None) -> int | None:
    """Give every entry of one base config the same optimizer steps (the base's max_steps, else the steps its
    epochs come to on its training rows) with early stopping off; the steps, or None for whole configs."""
    if base is None:
        return None
    from tunelab.train.budget import auto_epochs
    from tunelab.inputs import load_data

    config = validate_config(base)
    steps = config.train.max_steps
    if steps <= 0:
        rows = len(load_data(config).all_train.rows)
        epochs = auto_epochs(rows) if config.train.epochs == "auto" else config.train.epochs
        steps = math.ceil(math.ceil(rows / (config.train.batch_size * config.train.grad_accum)) * epochs)
    for entry in entries:
        entry.raw.setdefault("train", {}).update(max_steps=steps, early_stopping_patience=0)
    return steps


def compare(entries: list[Entry], seeds: int, out_dir: Path | None, base: dict[str, Any] | None,
            on_event: Listener | None = None) -> dict[str, Any]:
    configs = [validate_config(e.raw) for e in entries]  # every entry's mistake shows before anything trains
    out = Path(out_dir or Path("runs") / f"{configs[0].name}-compare")
    steps = same_budget(entries, base)
    events = Events(on_event)
    rows = []
    for n, entry in enumerate(entries, 1):
        if seeds > 1:
            first = configs[n - 1].train.seed
            entry.raw.setdefault("train", {})["seeds"] = [first + i for i in range(seeds)]
        events.emit("entry_started", message=f"[{n}/{len(entries)}] {entry.label}")
        rows.append(run_entry(entry, out))
    failed = [r["label"] for r in rows if r["summary"] is None]
    if len(failed) == len(rows):
        raise RunAborted(f"compare: every entry failed ({', '.join(failed)}); see their run directories in {out}")
    board = {**leaderboard([r for r in rows if r["summary"] is not None], steps, out), "failed": failed}
    write_compare_files(out, board)
    return board


def run_entry(entry: Entry, out: Path) -> dict[str, Any]:
    """`tunelab run` on the entry's config in a fresh process (its own peak memory); the run's summary."""
    run_dir = out / entry.label
    entry.raw["output_dir"] = str(run_dir.resolve())
    config_path = out / "configs" / f"{entry.label}.yaml"
    write_atomic(config_path, dump_config(validate_config(entry.raw)))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "run", str(config_path)], env=os.environ.copy())
    wall = time.monotonic() - started
    # A failed entry (say, a method this machine cannot run) is listed as failed; the others still compare.
    summary = RunDir(run_dir).read_summary() if done.returncode == 0 else None
    return {"label": entry.label, "run_dir": str(run_dir), "wall_seconds": round(wall, 1), "summary": summary}


def leaderboard(rows: list[dict[str, Any]], steps: int | None, out: Path) -> dict[str, Any]:
    metric = headline_metric(rows[0]["summary"])
    entries = [board_row(r, metric) for r in rows]
    front = pareto_front([(e["metric"]["mean"], e["wall_seconds"]) for e in entries], describe(metric).higher_is_better)
    for e, on_front in zip(entries, front):
        e["pareto"] = on_front
    higher = describe(metric).higher_is_better
    entries.sort(key=lambda e: -e["metric"]["mean"] if higher else e["metric"]["mean"])
    return {"metric": metric, "higher_is_better": higher, "steps": steps, "entries": entries, "out_dir": str(out)}


def board_row(row: dict[str, Any], metric: str) -> dict[str, Any]:
    s = row["summary"]
    iv = ((s.get("repeat") or {}).get("intervals") or {}).get("after", {}).get(metric)
    mean = s["after"].get(metric)
    forgetting = s.get("forgetting") or {}
    return {"label": row["label"], "method": s["method"], "model": s["model"], "run_dir": row["run_dir"],
            "metric": iv or {"mean": mean, "low": mean, "high": mean, "n": 1},
            "forgetting_perplexity_change": forgetting.get("perplexity_change"),  # a mean over seeds when repeated
            "forgetting_perplexity_interval": forgetting.get("perplexity_interval"),
            "trainable_params": s["trainable_params"], "artifact_bytes": s["resources"]["artifact_bytes"],
            "peak_rss_bytes": s["resources"]["peak_rss_bytes"], "train_seconds": s["train"]["seconds"],
            "wall_seconds": row["wall_seconds"], "steps": s["train"]["steps"], "train_tokens": s["train"]["tokens"],
            "prompting": prompting_entry(s.get("prompting"))}


def prompting_entry(w: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's best prompting baseline and what a tuned answer saves over it (eval/worth.py), for the board."""
    if not w:
        return None
    keep = ("best", "label", "best_value", "prompting_may_be_enough", "timing", "best_seconds", "tuned_seconds",
            "best_prompt_tokens", "tuned_prompt_tokens", "break_even_answers")
    return {k: w[k] for k in keep}


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[bool]:
    """For (metric, cost) points: True where no other point is at least as good on both and better on one."""
    sign = 1 if higher_is_better else -1

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return sign * a[0] >= sign * b[0] and a[1] <= b[1] and (sign * a[0] > sign * b[0] or a[1] < b[1])

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def board_table(board: dict[str, Any]) -> list[tuple[str, ...]]:
    metric = board["metric"]
    rows = [("entry", f"{describe(metric).label} (95% CI over seeds)", "best prompting", "s/answer prompted → tuned",
             "break-even answers", "forgetting: ppl [95% CI]", "trainable", "artifact MiB", "peak MiB", "train s",
             "wall s", "tokens", "Pareto")]
    for e in board["entries"]:
        m = e["metric"]
        shown = fmt(metric, m["mean"]) + (f" [{fmt(metric, m['low'])}, {fmt(metric, m['high'])}]" if m["n"] > 1 else "")
        ppl, span = e["forgetting_perplexity_change"], e.get("forgetting_perplexity_interval")
        forgot = "-" if ppl is None else f"{100 * ppl:+.1f}%" + \
            (f" [{100 * span[0]:+.1f}, {100 * span[1]:+.1f}]" if span else "")
        rows.append((e["label"], shown, *prompting_cells(e.get("prompting"), metric), forgot, f"{e['trainable_params']:,}",
                     f"{e['artifact_bytes'] / 2**20:,.1f}", f"{e['peak_rss_bytes'] / 2**20:,.0f}",
                     f"{e['train_seconds']:.0f}", f"{e['wall_seconds']:.0f}", f"{e['train_tokens']:,}",
                     "yes" if e["pareto"] else ""))
    return rows


def prompting_cells(p: dict[str, Any] | None, metric: str) -> tuple[str, str, str]:
    """The best prompting baseline and its value ("may be enough" when tuning did not clearly beat it), its
    seconds per answer against the tuned model's, and the answers that repay the tuning time."""
    if not p:
        return "-", "-", "-"
    best = f"{p['label']} {fmt(metric, p['best_value'])}" + (" (may be enough)" if p["prompting_may_be_enough"] else "")
    seconds = f"{p['best_seconds']:.3f} → {p['tuned_seconds']:.3f}"
    return best, seconds, "-" if p["break_even_answers"] is None else f"{p['break_even_answers']:,.0f}"


def pareto_png(board: dict[str, Any], out: Path) -> str:
    """The metric against two costs (wall time, peak memory); the Pareto front (on time) is drawn as a line."""
    from matplotlib.ticker import PercentFormatter

    fig, axes = figure(11, 4, ncols=2)
    metric = describe(board["metric"]).label
    fig.suptitle("blue: on the Pareto front (no entry at least as good and as fast)", fontsize=9)
    for ax, key, scale, name in ((axes[0], "wall_seconds", 1, "wall time (s)"),
                                 (axes[1], "peak_rss_bytes", 2**20, "peak memory (MiB)")):
        for e in board["entries"]:
            ax.scatter(e[key] / scale, e["metric"]["mean"], color="tab:blue" if e["pareto"] else "tab:gray")
            ax.annotate(e["label"], (e[key] / scale, e["metric"]["mean"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        if describe(board["metric"]).percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    front = sorted((e["wall_seconds"], e["metric"]["mean"]) for e in board["entries"] if e["pareto"])
    axes[0].plot(*zip(*front), color="tab:blue", linewidth=1)
    return save_png(fig, out / "pareto.png")


def write_compare_files(out: Path, board: dict[str, Any]) -> None:
    write_json(out / "leaderboard.json", board)
    budget = f"{board['steps']} optimizer steps each (early stopping off)" if board["steps"] else "each config's own budget"
    intro = [f"Held-out {describe(board['metric']).label}; {budget}. Pareto: no other entry is at least as good "
             "on the metric and as cheap in wall time.", "Each entry's run directory holds its full report."]
    if board["failed"]:
        intro.append(f"Failed (see their run directories): {', '.join(board['failed'])}.")
    write_pages(out, "leaderboard", "tunelab compare", intro, {"Leaderboard": board_table(board)},
                {"Metric against cost (Pareto)": pareto_png(board, out)})


def print_leaderboard(board: dict[str, Any]) -> None:
    print()
    print("\n".join(md_table(board_table(board))))
    if board["failed"]:
        print(f"\nfailed: {', '.join(board['failed'])} (see their run directories)")
    print(f"\nleaderboard: {Path(board['out_dir']) / 'leaderboard.md'}, {Path(board['out_dir']) / 'leaderboard.html'}")
