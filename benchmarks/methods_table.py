"""Every registered method on the quickstart task, in one sitting: the README's method table.

    python benchmarks/methods_table.py [--methods lora,full,...] [--out benchmarks/methods.md] [key=value ...]
    python benchmarks/methods_table.py --from-runs runs/methods-table-DATE [key=value ...]   # re-render only

Each method runs `tunelab run examples/quickstart.yaml method=NAME` in its own process (so peak memory is
its own), with the overrides given (the same for every method). The table goes to --out and replaces
the block between the `methods-table` markers in README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tables import ROOT, markdown, publish, run_config, sitting

COLUMNS = ("method", "trainable params", "% of total", "artifact MB", "peak RSS MB", "train s", "tokens/s",
           "exact match before → after", "held-out loss before → after", "forgetting: general ppl change")


def run_method(method: str, overrides: list[str], out_root: Path) -> dict:
    return {"method": method, **run_config(method, ["examples/quickstart.yaml", f"method={method}", *overrides],
                                           out_root / method)}


def row(s: dict) -> tuple[str, ...]:
    if "error" in s:
        return (s["method"], f"failed: {s['error'][:80]}", *[""] * (len(COLUMNS) - 2))
    before, after, r, t = s["before"], s["after"], s["resources"], s["train"]
    forgetting = s.get("forgetting") or {}
    ppl = f"{100 * forgetting['perplexity_change']:+.1f}%" if "perplexity_change" in forgetting else "-"
    return (s["method"], f"{s['trainable_params']:,}", f"{100 * s['trainable_params'] / s['total_params']:.3f}",
            f"{r['artifact_bytes'] / 1e6:.2f}", f"{r['peak_rss_bytes'] / 2**20:,.0f}", f"{t['seconds']:.0f}",
            f"{t['tokens_per_second']:.0f}",
            f"{100 * before['exact_match']:.1f}% → {100 * after['exact_match']:.1f}%",
            f"{before['eval_loss']:.3f} → {after['eval_loss']:.3f}", ppl)


def table(summaries: list[dict], overrides: list[str]) -> str:
    model = next((s["model"] for s in summaries if "model" in s), "?")
    intro = f"Quickstart task, model `{model}`, `{' '.join(overrides) or 'no overrides'}`; {sitting('methods_table.py')}"
    lines = [intro, "", *markdown(COLUMNS, [row(s) for s in summaries])]
    return "\n".join(lines) + "\n"


def main() -> int:
    from tunelab.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: every method)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "methods.md"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / f"methods-table-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--from-runs", help="render the table from a finished sitting's run directories (no training)")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every method's run")
    args = parser.parse_args()
    if args.from_runs:
        summaries = [{"method": m, **json.loads((Path(args.from_runs) / m / "summary.json").read_text())}
                     for m in args.methods.split(",")]
    else:
        summaries = [run_method(m, args.overrides, Path(args.runs)) for m in args.methods.split(",")]
    return publish(table(summaries, args.overrides), args.out, "methods-table", summaries)


if __name__ == "__main__":
    sys.exit(main())
