"""The run's report: report.md and one self-contained report.html (plots inline, no network).

Both open with the verdict (gain over zero-shot and the few-shot baselines, whether prompting may be enough
and what an answer costs, forgetting, fit), then the curves, the metrics table, the cost per answer of each
column, the forgetting probe, a confusion matrix for classification and held-out examples. Every
comparison in the verdict is read from summary.json's `comparisons` (eval/intervals.py): a change is
called a gain or a loss only when its 95% interval excludes no change. A summary written before intervals
existed is still read; its sentences then say they carry none.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tunelab.eval.worth import COST_HEADER, cost_rows, weigh, worth_sentence
from tunelab.rundir import RunDir
from tunelab.scoring.metrics import confusion, describe

Row = tuple[str, ...]


def fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if describe(name).percent else f"{value:.4f}"


def signed(name: str, diff: float, unit: bool = True) -> str:
    """A difference in the metric's own terms: "+13.3 pts" for a percentage, "-0.0123" otherwise."""
    if describe(name).percent:
        return f"{100 * diff:+.1f}" + (" pts" if unit else "")
    return f"{diff:+.4f}"


def delta(name: str, before: float, after: float) -> str:
    return signed(name, after - before)


def comparison(summary: dict[str, Any], other: str, name: str) -> dict[str, Any] | None:
    """The tuned model against `other` (zero_shot or a baseline's key) on a metric, when summary.json has it."""
    return ((summary.get("comparisons") or {}).get(other) or {}).get(name)


def interval_words(name: str, c: dict[str, Any]) -> str:
    """"+13.3 pts, 95% CI +5.0 to +21.7": the difference and its interval."""
    unit = " pts" if describe(name).percent else ""
    low, high = signed(name, c["low"], False), signed(name, c["high"], False)
    return f"{signed(name, c['difference'])}, 95% CI {low} to {high}{unit}"


def change_cell(summary: dict[str, Any], name: str) -> str:
    """The table's change over zero-shot, with its interval where one was measured."""
    change = delta(name, summary["before"][name], summary["after"][name])
    c = comparison(summary, "zero_shot", name)
    return change if c is None else f"{change} [{signed(name, c['low'], False)}, {signed(name, c['high'], False)}]"


def baselines(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(name, label, metrics) of each cheap alternative the task measured (few-shot, linear probe, ...)."""
    return [(name, b["label"], b["metrics"]) for name, b in (summary.get("baselines") or {}).items()]


def comparison_header(summary: dict[str, Any]) -> Row:
    change = "change [95% CI]" if summary.get("comparisons") else "change"
    return ("metric", "zero-shot", *(label for _, label, _ in baselines(summary)), "tuned", change)


def comparison_rows(summary: dict[str, Any]) -> list[Row]:
    """(metric, zero-shot, each baseline, tuned, change over zero-shot with its interval) for every metric
    measured both times."""
    before, after, others = summary["before"], summary["after"], baselines(summary)
    return [(describe(k).label, fmt(k, before[k]), *(fmt(k, m.get(k)) for _, _, m in others), fmt(k, after[k]),
             change_cell(summary, k)) for k in before if k in after and describe(k).compared]


def headline_metric(summary: dict[str, Any]) -> str:
    """The first of the run's metrics that was measured, else perplexity, else the held-out loss."""
    for name in summary.get("metrics", []):
        if name != "perplexity" and name in summary["after"]:
            return name
    return "perplexity" if "perplexity" in summary["after"] else "eval_loss"


def _better(name: str, a: float, b: float) -> bool:
    return a > b if describe(name).higher_is_better else a < b


def gain_sentence(summary: dict[str, Any]) -> str:
    """Did tuning help: the headline metric against zero-shot and each baseline, decided by each interval."""
    name = headline_metric(summary)
    zero, tuned = summary["before"][name], summary["after"][name]
    others = [(key, label, m[name]) for key, label, m in baselines(summary) if m.get(name) is not None]
    shown = ", ".join([f"{describe(name).label} {fmt(name, zero)} zero-shot",
                       *(f"{fmt(name, v)} {label}" for _, label, v in others), f"{fmt(name, tuned)} tuned"])
    vs_zero = comparison(summary, "zero_shot", name)
    if vs_zero is None:
        return unmeasured_gain_sentence(name, zero, tuned, others, shown)
    if vs_zero["direction"] != "better":
        lead = "Tuning made it worse" if vs_zero["direction"] == "worse" else "No clear difference from zero-shot"
        return f"{lead}: {shown} ({interval_words(name, vs_zero)}; {basis(vs_zero)})."
    parts, short = [f"{interval_words(name, vs_zero)} over zero-shot"], []
    for key, label, value in others:
        c = comparison(summary, key, name)
        parts.append(f"{interval_words(name, c)} over {label}" if c else f"{delta(name, value, tuned)} over {label}, "
                                                                          "no interval")
        if c is None or c["direction"] != "better":
            short.append(f"the {label} baseline did better" if c and c["direction"] == "worse" else
                         f"no clear difference from the {label} baseline")
    if short:
        return (f"Tuning beat zero-shot, but {'; '.join(short)}: {shown} ({'; '.join(parts)}; {basis(vs_zero)}); "
                "the cheaper alternative may suffice.")
    return f"Tuning helped: {shown} ({'; '.join(parts)}; {basis(vs_zero)})."


def basis(c: dict[str, Any]) -> str:
    """What an interval rests on: "60 rows", or over seeds "60 rows, 3 seeds"."""
    return f"{c['rows']} rows" + (f", {c['seeds']} seeds" if c.get("seeds") else "")


def unmeasured_gain_sentence(name: str, zero: float, tuned: float, others: list[tuple[str, str, float]],
                             shown: str) -> str:
    """The raw comparison of a summary with no intervals (written before they existed), saying so."""
    if not _better(name, tuned, zero):
        return f"Tuning did not help: {shown} (no interval)."
    beaten_by = [label for _, label, v in others if not _better(name, tuned, v)]
    if beaten_by:
        return (f"Tuning beat zero-shot but not the {' or the '.join(beaten_by)} baseline: {shown}; the cheaper "
                "alternative may suffice (no interval).")
    extra = "".join(f", {delta(name, v, tuned)} over {label}" for _, label, v in others)
    return f"Tuning helped: {shown} ({delta(name, zero, tuned)} over zero-shot{extra}; no interval)."


WORSE_POINTS = 0.05  # without an interval, a held-out percentage that falls by more than this is named


def regression_sentence(summary: dict[str, Any]) -> str | None:
    """The held-out percentages other than the headline that tuning clearly made worse (their interval below
    no change): a gain on one metric can hide a loss on another (DPO raising preference accuracy while its
    answers stop being valid JSON)."""
    head, before, after = headline_metric(summary), summary["before"], summary["after"]

    def worse(k: str) -> bool:
        c = comparison(summary, "zero_shot", k)
        if c is not None:
            return c["direction"] == "worse"
        return _better(k, before[k], after[k]) and abs(after[k] - before[k]) > WORSE_POINTS

    named = [k for k in before if k != head and k in after and describe(k).compared and describe(k).percent
             and worse(k)]
    if not named:
        return None
    def change(k: str) -> str:
        c = comparison(summary, "zero_shot", k)
        return interval_words(k, c) if c else delta(k, before[k], after[k])

    shown = ", ".join(f"{describe(k).label} {fmt(k, before[k])} → {fmt(k, after[k])} ({change(k)})" for k in named)
    return f"Worse after tuning: {shown}."


def forgetting_sentence(summary: dict[str, Any]) -> str | None:
    """Forgetting, each measure against its own threshold and its noise."""
    f = summary.get("forgetting")
    if not f:
        return None
    if "perplexity_threshold" not in f:
        return unmeasured_forgetting_sentence(f)
    shown = ", ".join(forgetting_words(f)) + (f"; means over {f['seeds']} seeds" if f.get("seeds") else "")
    limits = f"+{100 * f['perplexity_threshold']:.0f}% perplexity" + \
        (f", -{100 * f['accuracy_threshold']:.0f} pts accuracy" if f["questions"] else "")
    if f["flagged"]:
        which = " and ".join(n for n, on in (("perplexity", f["perplexity_flagged"]),
                                             ("general questions", f["accuracy_flagged"])) if on)
        return (f"Forgetting ({which} beyond the threshold, {limits}, and beyond noise): {shown}. "
                f"Try: {'; '.join(f['remedies'])}.")
    return f"No forgetting beyond the thresholds ({limits}) and noise: {shown}."


def forgetting_words(f: dict[str, Any]) -> list[str]:
    """Each probe figure with its change and interval."""
    ppl = f"general-text perplexity {f['perplexity_before']:.2f} → {f['perplexity_after']:.2f} " \
          f"({100 * f['perplexity_change']:+.1f}%"
    if f.get("perplexity_interval"):
        low, high = f["perplexity_interval"]
        ppl += f", 95% CI {100 * low:+.1f}% to {100 * high:+.1f}%"
    words = [ppl + ")"]
    if f["questions"]:
        acc = f"general questions {100 * f['accuracy_before']:.1f}% → {100 * f['accuracy_after']:.1f}% " \
              f"({100 * f['accuracy_change']:+.1f} pts"
        if f.get("accuracy_interval"):
            low, high = f["accuracy_interval"]
            acc += f", 95% CI {100 * low:+.1f} to {100 * high:+.1f}; {f['forgotten']:g} forgotten, " \
                   f"{f['learned']:g} learned of {f['questions']}"
        words.append(acc + ")")
    return words


def unmeasured_forgetting_sentence(f: dict[str, Any]) -> str:
    """A summary from before the probe had intervals and two thresholds."""
    shown = f"general-text perplexity {f['perplexity_before']:.2f} → {f['perplexity_after']:.2f} " \
            f"({100 * f['perplexity_change']:+.1f}%)"
    if f["questions"]:
        shown += f", general questions {100 * f['accuracy_before']:.0f}% → {100 * f['accuracy_after']:.0f}%"
    if f["flagged"]:
        return f"Forgetting beyond the {100 * f['threshold']:.0f}% threshold: {shown} (no interval). " \
               f"Try: {'; '.join(f['remedies'])}."
    return f"No forgetting beyond the {100 * f['threshold']:.0f}% threshold: {shown} (no interval)."


def fit_sentences(summary: dict[str, Any]) -> list[str]:
    d = summary.get("diagnosis")
    if not d:
        return []
    lines = [f"Fit: {d['verdict']}" + (": " + "; ".join(f["evidence"] for f in d["findings"]) if d["findings"]
                                       else ".")]
    if d["suggestions"]:
        lines.append("Try: " + "; ".join(d["suggestions"]) + ".")
    stop = summary.get("early_stopping")
    if stop and stop.get("best_step") is not None:
        how = f"stopped early at step {stop['stopped_early_at']}" if stop["stopped_early_at"] else "ran to the end"
        on = f" of {stop['validation_rows']} rows set aside from train" if stop.get("validation_rows") else ""
        lines.append(f"Early stopping on {stop['metric']}{on}: {how}; the final numbers use the best weights, from "
                     f"step {stop['best_step']} ({stop['metric']} {stop['best_value']:.4f}).")
    return lines


def worth_line(summary: dict[str, Any]) -> str | None:
    """Prompting against tuning, on quality and cost per answer (eval/worth.py)."""
    return worth_sentence(weigh(summary, headline_metric(summary)), fmt, interval_words)


def cost_table(summary: dict[str, Any]) -> list[Row]:
    rows = cost_rows(summary)
    return [COST_HEADER, *rows] if rows else []


def verdict(summary: dict[str, Any]) -> list[str]:
    return [s for s in (gain_sentence(summary), worth_line(summary), regression_sentence(summary),
                        forgetting_sentence(summary), *fit_sentences(summary)) if s]


def read_samples(run_dir: Path, n: int) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_samples(n)


FORGETTING_HEADER = ("probe", "before", "after", "change [95% CI]", "threshold")


def forgetting_rows(summary: dict[str, Any]) -> list[Row]:
    """The probe's figures, each change with its interval and its own threshold."""
    f = summary.get("forgetting")
    if not f:
        return []

    def span(key: str) -> str:
        low_high = f.get(key)
        return f" [{100 * low_high[0]:+.1f}, {100 * low_high[1]:+.1f}]" if low_high else ""

    ppl_limit = f.get("perplexity_threshold", f.get("threshold"))
    rows = [("general-text perplexity", f"{f['perplexity_before']:.3f}", f"{f['perplexity_after']:.3f}",
             f"{100 * f['perplexity_change']:+.1f}%" + span("perplexity_interval"), f"+{100 * ppl_limit:.0f}%")]
    if f["questions"]:
        acc_limit = f.get("accuracy_threshold", f.get("threshold"))
        rows.append((f"general questions ({f['questions']})", f"{100 * f['accuracy_before']:.1f}%",
                     f"{100 * f['accuracy_after']:.1f}%",
                     f"{100 * f['accuracy_change']:+.1f} pts" + span("accuracy_interval"),
                     f"-{100 * acc_limit:.0f} pts"))
    return rows


def confusion_rows(run_dir: Path, summary: dict[str, Any]) -> list[Row]:
    """Reference label by tuned answer counts, when a classification metric was asked for."""
    if not {"accuracy", "macro_f1"} & set(summary.get("metrics", [])):
        return []
    samples = read_samples(run_dir, 10**9)
    if not samples:
        return []
    labels, counts = confusion([s["after"] for s in samples], [s["reference"] for s in samples])
    return [("reference \\ answer", *labels)] + [(label, *map(str, row)) for label, row in zip(labels, counts)]


def leakage(run_dir: Path) -> Any:
    return RunDir(run_dir).read_data_info().get("leakage")


def md_table(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    return [f"| {' | '.join(rows[0])} |", "|" + "---|" * len(rows[0])] + [f"| {' | '.join(r)} |" for r in rows[1:]]


def render_markdown(run_dir: Path, summary: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    lines = [f"# tunelab run: {run_dir.name}", "", "## Verdict", ""] + [f"- {s}" for s in verdict(summary)]
    lines += ["", training_line(summary), "", "## Held-out results", ""]
    lines += md_table([comparison_header(summary), *comparison_rows(summary)])
    if cost_table(summary):
        lines += ["", "## Cost per answer", ""] + md_table(cost_table(summary))
    if forgetting_rows(summary):
        lines += ["", "## General ability (forgetting probe)", ""]
        lines += md_table([FORGETTING_HEADER, *forgetting_rows(summary)])
    if confusion_rows(run_dir, summary):
        lines += ["", "## Confusion matrix (tuned)", ""] + md_table(confusion_rows(run_dir, summary))
    if leakage(run_dir) is not None:
        lines += ["", "## Leakage check", "", "```json", json.dumps(leakage(run_dir), indent=2), "```"]
    lines += ["", "Loss curves and plots: see report.html."] + _md_samples(samples, summary)
    return "\n".join(lines) + "\n"


def training_line(summary: dict[str, Any]) -> str:
    t = summary["train"]
    return (f"Model `{summary['model']}`, method `{summary['method']}`, task `{summary['task']}`; "
            f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained "
            f"({100 * summary['trainable_params'] / summary['total_params']:.2f}%) for {t['steps']} steps in "
            f"{t['seconds']:.0f} s, {t['tokens']:,} tokens ({t['tokens_per_second']:.0f} tokens/s{flops_words(t)})."
            + resources_words(summary))


def flops_words(train: dict[str, Any]) -> str:
    """", 0.09 model TFLOP/s, MFU 41.2%": the PaLM count of model FLOPs per second, and MFU where known."""
    if "model_flops_per_s" not in train:
        return ""
    mfu = f", MFU {train['mfu']:.1%}" if "mfu" in train else ""
    return f", {train['model_flops_per_s'] / 1e12:.2f} model TFLOP/s{mfu}"


def resources_words(summary: dict[str, Any]) -> str:
    r = summary.get("resources")
    if not r:
        return ""
    gpu = f", peak GPU memory {r['peak_gpu_bytes'] / 2**20:,.0f} MiB" if "peak_gpu_bytes" in r else ""
    return f" Artifact {r['artifact_bytes'] / 2**20:,.1f} MiB on disk; peak memory {r['peak_rss_bytes'] / 2**20:,.0f} MiB{gpu}."


def baseline_outputs(sample: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of each baseline whose answer this sample holds."""
    return [(name, label) for name, label, _ in baselines(summary) if sample.get(name) is not None]


def _md_samples(samples: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    out = ["", "## Held-out examples", ""] if samples else []
    for s in samples:
        out += [f"**Prompt:** {one_line(s['prompt'])}", "", f"- reference: `{one_line(s['reference'])}`",
                f"- base (zero-shot): `{one_line(s['before'])}`"]
        for name, label in baseline_outputs(s, summary):
            out.append(f"- base ({label}): `{one_line(s[name])}`")
        out += [f"- tuned: `{one_line(s['after'])}`", ""]
    return out


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[:limit] + "…"


def png_base64(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)
