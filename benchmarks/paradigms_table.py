"""Every paradigm's example on the bundled models, in one sitting: the README's paradigm table.

    python benchmarks/paradigms_table.py [--tasks sft,causal_lm,...] [--teacher DIR] [--out benchmarks/paradigms.md]
    python benchmarks/paradigms_table.py --from-runs runs/paradigms-table-DATE   # re-render only

Each row is `tunelab run examples/<config>.yaml` as shipped, in its own process. The distill row distils
`--teacher` (a tuned model dir, e.g. a quickstart run with method=full: runs/<run>/model), else the
example's own teacher (the untuned bundled model). The table goes to --out and replaces the
`paradigms-table` block in README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tables import ROOT, markdown, publish, run_config, sitting

# task -> its example config
EXAMPLES = {"sft": "quickstart.yaml", "causal_lm": "causal_lm.yaml", "classify": "classify.yaml", "ner": "ner.yaml",
            "contrastive": "contrastive.yaml", "reward": "reward.yaml", "dpo": "dpo.yaml", "rlhf": "rlhf.yaml",
            "distill": "distill.yaml"}
COLUMNS = ("task", "model, method", "held-out metrics: untuned → tuned", "beside it", "train s", "peak RSS MB",
           "command")


def run_task(task: str, out_root: Path, teacher: str | None) -> dict:
    args = [f"examples/{EXAMPLES[task]}", *([f"distill.teacher={teacher}"] if task == "distill" and teacher else [])]
    return {"row": task, "args": args, **run_config(task, args, out_root / task)}


def fmt(name: str, value: float) -> str:
    import tunelab.tasks  # noqa: F401  (registers the tasks' own metrics, e.g. distill's gap_closed)
    from tunelab.scoring.metrics import describe

    return f"{100 * value:.1f}%" if describe(name).percent else f"{value:.4g}"


def headline(s: dict) -> str:
    shown = [m for m in s["metrics"] if m in s["before"] and m in s["after"]][:3]
    if not shown:
        shown = [m for m in ("perplexity", "eval_loss") if m in s["before"] and m in s["after"]][:1]
    return "; ".join(f"{m} {fmt(m, s['before'][m])} → {fmt(m, s['after'][m])}" for m in shown)


def beside(s: dict) -> str:
    """What the run measured next to the tune: the cheap baselines, forgetting, a distilled student's gap."""
    parts = [f"{name}: " + ", ".join(f"{m} {fmt(m, v)}" for m, v in b["metrics"].items() if m in s["metrics"][:2])
             for name, b in (s.get("baselines") or {}).items() if b.get("metrics")]
    after = s["after"]
    parts += [f"{m} {fmt(m, after[m])}" for m in ("gap_closed", "speedup") if m in after]
    teacher = (s.get("teacher") or {}).get("metrics") or {}
    parts += [f"teacher {m} {fmt(m, teacher[m])}" for m in s["metrics"][:1] if m in teacher]
    forgetting = s.get("forgetting") or {}
    if "perplexity_change" in forgetting:
        parts.append(f"general ppl {100 * forgetting['perplexity_change']:+.1f}%")
    if forgetting.get("accuracy_change") is not None:
        parts.append(f"general questions {100 * forgetting['accuracy_before']:.0f}% → "
                     f"{100 * forgetting['accuracy_after']:.0f}%")
    return "; ".join(parts) or "-"


def row(s: dict) -> tuple[str, ...]:
    command = "`tunelab run " + " ".join(s["args"]) + "`"
    if "error" in s:
        return (s["row"], "", f"failed: {s['error'][:80]}", "", "", "", command)
    model = Path(s["model"]).name if "/" in s["model"] else s["model"]  # a built student lives in the cache
    return (s["row"], f"{model}, {s['method']}", headline(s), beside(s), f"{s['train']['seconds']:.0f}",
            f"{s['resources']['peak_rss_bytes'] / 2**20:,.0f}", command)


def table(summaries: list[dict]) -> str:
    lines = [f"Each paradigm's example as shipped; {sitting('paradigms_table.py')}", "",
             *markdown(COLUMNS, [row(s) for s in summaries])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(EXAMPLES), help="comma-separated (default: every paradigm)")
    parser.add_argument("--teacher", help="the distill row's teacher: a tuned model dir")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "paradigms.md"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / f"paradigms-table-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--from-runs", help="render the table from a finished sitting's run directories (no training)")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if args.from_runs:
        summaries = [{"row": t, "args": json.loads((Path(args.from_runs) / t / "args.json").read_text()),
                      **json.loads((Path(args.from_runs) / t / "summary.json").read_text())} for t in tasks]
    else:
        summaries = [run_task(t, Path(args.runs), args.teacher) for t in tasks]
        for s in summaries:
            if "error" not in s:
                (Path(args.runs) / s["row"] / "args.json").write_text(json.dumps(s["args"]))
    return publish(table(summaries), args.out, "paradigms-table", summaries)


if __name__ == "__main__":
    sys.exit(main())
