"""How a run looks in a terminal: its events drawn as lines and bars, then the before/after table.

Every line is an event's own message (the words live with the event kinds, `tunelab.events`), so the
terminal says what events.jsonl and a dashboard say. Bars: one for training steps, one for a counted loop
(rows scored, answers generated: done/total, rate, ETA), and between them the current phase with the time
it has taken, redrawn every second on a terminal so something always moves.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tunelab.eval.report import comparison_header, comparison_rows, cost_table, flops_words, verdict
from tunelab.events import INFO, PROGRESS, Event

SHOWN_ELSEWHERE = {"run_failed", "run_interrupted", "run_finished"}  # the CLI prints the error or the summary
ENDS_PHASE = {"model_ready", "reused", "train_started", "train_finished", "run_finished"}
TICK_SECONDS = 1.0


class ConsoleProgress:
    """Listens to a run's events and draws them on stderr."""

    def __init__(self, stream: Any = None, tick: float = TICK_SECONDS):
        self.stream = stream if stream is not None else sys.stderr  # the one in place now, not at import
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())  # bars that redraw need a terminal
        self.bar: tqdm | None = None
        self.shape = ""            # what self.bar shows: "train", "count" or "phase"
        self.phase: str | None = None
        self.transient = False     # the phase is the CLI's own `waiting`, gone at the first line
        self.counting: str | None = None
        self.train_words = ""
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        if self.live:
            threading.Thread(target=self._tick, args=(tick,), name="tunelab-console", daemon=True).start()

    def __call__(self, event: Event) -> None:
        with self.lock:
            if event.level == PROGRESS:
                getattr(self, f"_on_{event.kind}", self._on_progress)(event)
            elif event.kind not in SHOWN_ELSEWHERE:
                self._line(event)

    def say(self, text: str) -> None:
        with self.lock:
            if self.shape in ("phase", "count"):
                self._close()
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def waiting(self, text: str) -> None:
        """A phase of the CLI's own before the run has said anything: drawn with its time on a terminal and gone
        at the first line (printed nowhere else, so a mistake found then is still the only line)."""
        with self.lock:
            self.phase, self.transient = text, True
            self._show_phase()

    def _line(self, e: Event) -> None:
        if self.transient:
            self.phase, self.transient = None, False
        self.say(e.message if e.level == INFO else f"{e.level}: {e.message}")
        if e.kind in ("phase", "evaluating"):
            self.phase = e.message.rstrip(" .")
        elif e.kind in ENDS_PHASE:
            self.phase = None
        self._show_phase()

    def _show_phase(self) -> None:
        if self.live and self.bar is None and self.phase:
            self._open("phase", tqdm(desc=self.phase, bar_format="{desc} ... {elapsed}", file=self.stream,
                                     dynamic_ncols=True, leave=False, disable=False))

    def _on_train_started(self, e: Event) -> None:
        self._close()
        self.phase = None
        self._open("train", tqdm(total=e.fields["max_steps"], initial=e.fields["start_step"], desc="train",
                                 unit="step", file=self.stream, dynamic_ncols=True, disable=False))

    def _on_step(self, e: Event) -> None:
        if self.shape != "train":
            return
        self.bar.update(e.fields["step"] - self.bar.n)
        loss = "-" if e.fields["loss"] is None else f"{e.fields['loss']:.3f}"
        self.train_words = f"loss {loss}, {e.fields['tokens_per_second']:.0f} tok/s"
        self.bar.set_postfix_str(self.train_words, refresh=False)

    def _on_train_finished(self, e: Event) -> None:
        if self.shape == "train":
            self._close()

    def _on_progress(self, e: Event) -> None:
        f = e.fields
        if self.shape == "train":  # a validation inside training: shown beside the steps
            words = self.train_words if f["done"] >= f["total"] else f"{f['what']} {f['done']}/{f['total']}"
            self.bar.set_postfix_str(words)
            return
        if not self.live:
            return
        if self.shape != "count" or self.counting != f["what"] or self.bar.total != f["total"]:
            self._close()
            self.counting = f["what"]
            self._open("count", tqdm(total=f["total"], desc=f["what"], unit=f["unit"], file=self.stream,
                                     dynamic_ncols=True, leave=False, disable=False))
        self.bar.update(f["done"] - self.bar.n)
        if f["done"] >= f["total"]:
            self._close()
            self._show_phase()

    def _open(self, shape: str, bar: tqdm) -> None:
        self.bar, self.shape = bar, shape

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.shape = None, ""

    def _tick(self, seconds: float) -> None:
        while not self.stopped.wait(seconds):
            with self.lock:
                if self.bar is not None:
                    self.bar.refresh()

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            self._close()


def print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    print()
    print_table([comparison_header(summary), *comparison_rows(summary)])
    if cost_table(summary):
        print("\ncost per answer (means):")
        print_table(cost_table(summary))
    for line in verdict(summary):
        print(f"- {line}")
    if "repeat" in summary:
        from tunelab.experiments import interval_rows

        print(f"\nover seeds {summary['repeat']['seeds']} (the table above shows means; these intervals are the "
              "spread between seeds only, the verdict's also hold the held-out sampling):")
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
