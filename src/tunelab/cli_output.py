"""How a run looks in a terminal: a progress bar fed by events, then the before/after table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tunelab.eval.report import comparison_header, comparison_rows, flops_words, verdict
from tunelab.events import Event


class ConsoleProgress:
    """Listens to a run's events and draws them on stderr."""

    def __init__(self, stream: Any = sys.stderr):
        self.stream = stream
        self.bar: tqdm | None = None

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        handler = getattr(self, f"_on_{kind}", None)
        if handler:
            handler(event)

    def say(self, text: str) -> None:
        (self.bar.write if self.bar else lambda t: print(t, file=self.stream))(text)

    def _on_run_started(self, e: Event) -> None:
        validation = f", {e['validation_rows']} validation rows set aside" if e.get("validation_rows") else ""
        self.say(f"run dir {e['run_dir']}  ({e['train_rows']} train rows{validation}, {e['eval_rows']} held-out rows)")

    def _on_warning(self, e: Event) -> None:
        self.say(f"warning: {e['message']}")

    def _say_message(self, e: Event) -> None:
        self.say(e["message"])

    _on_resumed = _on_step_skipped = _on_batch_backoff = _on_world_size_changed = _say_message

    def _on_evaluating(self, e: Event) -> None:
        self.say(f"evaluating {e.get('what') or e['which'] + ' training on the held-out set'} ...")

    def _on_model_ready(self, e: Event) -> None:
        share = 100 * e["trainable_params"] / e["total_params"]
        self.say(f"training {e['trainable_params']:,} of {e['total_params']:,} parameters ({share:.2f}%)")

    def _on_train_started(self, e: Event) -> None:
        self.bar = tqdm(total=e["max_steps"], initial=e["start_step"], desc="train", unit="step",
                        file=self.stream, dynamic_ncols=True)

    def _on_step(self, e: Event) -> None:
        if self.bar is None:
            return
        self.bar.update(e["step"] - self.bar.n)
        loss = "-" if e["loss"] is None else f"{e['loss']:.3f}"
        self.bar.set_postfix_str(f"loss {loss}, {e['tokens_per_second']:.0f} tok/s", refresh=False)

    def _on_train_finished(self, e: Event) -> None:
        self.close()

    def _on_eval(self, e: Event) -> None:
        from tunelab.eval.report import fmt
        from tunelab.scoring.metrics import describe

        shown = [f"{describe(k).label} {fmt(k, v)}" for k, v in e.items()
                 if k not in ("type", "time", "step", "epoch", "eval_loss") and isinstance(v, (int, float))]
        loss = f"eval loss {e['eval_loss']:.4f}" if "eval_loss" in e else "eval"  # an RL task has no held-out loss
        self.say(f"step {e['step']}: {loss}" + (f" ({', '.join(shown)})" if shown else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    print()
    print_table([comparison_header(summary), *comparison_rows(summary)])
    for line in verdict(summary):
        print(f"- {line}")
    if "repeat" in summary:
        from tunelab.experiments import interval_rows

        print(f"\nover seeds {summary['repeat']['seeds']} (the table above shows means):")
        print_table([("", "metric", "mean", "95% interval"), *interval_rows(summary)])
    t = summary["train"]
    print(f"\ntrained {summary['trainable_params']:,} parameters for {t['steps']} steps in {t['seconds']:.0f} s "
          f"({t['tokens_per_second']:.0f} tokens/s{flops_words(t)})")
    if "resources" in summary:
        r = summary["resources"]
        print(f"artifact {r['artifact_bytes'] / 2**20:,.1f} MiB on disk, peak memory {r['peak_rss_bytes'] / 2**20:,.0f} MiB")
    print(f"run directory: {run_dir}  (report.html, report.md, summary.json, model/)")


def print_table(rows: list[tuple[str, ...]], numbers: bool = True) -> None:
    """A rule under the header; the first column left-aligned, the rest right-aligned when they hold numbers."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 or not numbers else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
