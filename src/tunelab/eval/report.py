"""The run's report: report.md and one self-contained report.html (plots inline, no network).

Both open with the verdict (gain over zero-shot and few-shot, forgetting, fit), then the curves, the
metrics table, the forgetting probe, a confusion matrix for classification and held-out examples.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tunelab.rundir import RunDir
from tunelab.scoring.metrics import confusion, describe

Row = tuple[str, ...]


def fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if describe(name).percent else f"{value:.4f}"


def delta(name: str, before: float, after: float) -> str:
    diff = after - before
    return f"{100 * diff:+.1f} pts" if describe(name).percent else f"{diff:+.4f}"


def baselines(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(name, label, metrics) of each cheap alternative the task measured (few-shot, linear probe, ...)."""
    return [(name, b["label"], b["metrics"]) for name, b in (summary.get("baselines") or {}).items()]


def comparison_header(summary: dict[str, Any]) -> Row:
    return ("metric", "zero-shot", *(label for _, label, _ in baselines(summary)), "tuned", "change")


def comparison_rows(summary: dict[str, Any]) -> list[Row]:
    """(metric, zero-shot, each baseline, tuned, change over zero-shot) for every metric measured both times."""
    before, after, others = summary["before"], summary["after"], baselines(summary)
    return [(describe(k).label, fmt(k, before[k]), *(fmt(k, m.get(k)) for _, _, m in others), fmt(k, after[k]),
             delta(k, before[k], after[k])) for k in before if k in after and describe(k).compared]


def headline_metric(summary: dict[str, Any]) -> str:
    """The first of the run's metrics that was measured, else perplexity, else the held-out loss."""
    for name in summary.get("metrics", []):
        if name != "perplexity" and name in summary["after"]:
            return name
    return "perplexity" if "perplexity" in summary["after"] else "eval_loss"


def _better(name: str, a: float, b: float) -> bool:
    return a > b if describe(name).higher_is_better else a < b


def gain_sentence(summary: dict[str, Any]) -> str:
    name = headline_metric(summary)
    zero, tuned = summary["before"][name], summary["after"][name]
    others = [(label, m[name]) for _, label, m in baselines(summary) if m.get(name) is not None]
    shown = ", ".join([f"{describe(name).label} {fmt(name, zero)} zero-shot",
                       *(f"{fmt(name, v)} {label}" for label, v in others), f"{fmt(name, tuned)} tuned"])
    if not _better(name, tuned, zero):
        return f"Tuning did not help: {shown}."
    beaten_by = [label for label, v in others if not _better(name, tuned, v)]
    if beaten_by:
        return (f"Tuning beat zero-shot but not the {' or the '.join(beaten_by)} baseline: {shown}; the cheaper "
                "alternative may suffice.")
    extra = "".join(f", {delta(name, v, tuned)} over {label}" for label, v in others)
    return f"Tuning helped: {shown} ({delta(name, zero, tuned)} over zero-shot{extra})."


WORSE_POINTS = 0.05  # a held-out percentage that falls by more than this (5 points) is named in the verdict


def regression_sentence(summary: dict[str, Any]) -> str | None:
    """The held-out percentages other than the headline that tuning made worse: a gain on one metric can hide
    a loss on another (DPO raising preference accuracy while its answers stop being valid JSON)."""
    head, before, after = headline_metric(summary), summary["before"], summary["after"]
    worse = [k for k in before if k != head and k in after and describe(k).compared and describe(k).percent
             and _better(k, before[k], after[k]) and abs(after[k] - before[k]) > WORSE_POINTS]
    if not worse:
        return None
    shown = ", ".join(f"{describe(k).label} {fmt(k, before[k])} → {fmt(k, after[k])} ({delta(k, before[k], after[k])})"
                      for k in worse)
    return f"Worse after tuning: {shown}."


def forgetting_sentence(summary: dict[str, Any]) -> str | None:
    f = summary.get("forgetting")
    if not f:
        return None
    shown = f"general-text perplexity {f['perplexity_before']:.2f} → {f['perplexity_after']:.2f} " \
            f"({100 * f['perplexity_change']:+.1f}%)"
    if f["questions"]:
        shown += f", general questions {100 * f['accuracy_before']:.0f}% → {100 * f['accuracy_after']:.0f}%"
    if f["flagged"]:
        return f"Forgetting beyond the {100 * f['threshold']:.0f}% threshold: {shown}. Try: {'; '.join(f['remedies'])}."
    return f"No forgetting beyond the {100 * f['threshold']:.0f}% threshold: {shown}."


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


def verdict(summary: dict[str, Any]) -> list[str]:
    return [s for s in (gain_sentence(summary), regression_sentence(summary), forgetting_sentence(summary),
                        *fit_sentences(summary)) if s]


def read_samples(run_dir: Path, n: int) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_samples(n)


def forgetting_rows(summary: dict[str, Any]) -> list[Row]:
    f = summary.get("forgetting")
    if not f:
        return []
    rows = [("general-text perplexity", f"{f['perplexity_before']:.3f}", f"{f['perplexity_after']:.3f}",
             f"{100 * f['perplexity_change']:+.1f}%")]
    if f["questions"]:
        rows.append((f"general questions ({f['questions']})", f"{100 * f['accuracy_before']:.0f}%",
                     f"{100 * f['accuracy_after']:.0f}%", f"{100 * f['accuracy_change']:+.0f} pts"))
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
    if forgetting_rows(summary):
        lines += ["", "## General ability (forgetting probe)", ""]
        lines += md_table([("probe", "before", "after", "change"), *forgetting_rows(summary)])
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
