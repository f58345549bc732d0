"""report.html (one file a person can open anywhere, plots as inline PNG, matplotlib Agg, no network) and
write_report, which writes it beside report.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunelab.eval.diagnosis import read_curves
from tunelab.scoring.metrics import METRICS, describe, exact_match, label_accuracy
from tunelab.eval.report import (FORGETTING_HEADER, Row, baselines, comparison_header, comparison_rows, cost_table,
                                 confusion_rows, escape, forgetting_rows, leakage, png_base64, read_samples,
                                 render_markdown, training_line, verdict)
from tunelab.rundir import RunDir, write_atomic

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#1d2330}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
.verdict{background:#f3f6fb;border-left:4px solid #3d6fb6;padding:10px 16px}.verdict li{margin:4px 0}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccd;padding:4px 10px;text-align:right;vertical-align:top}
td:first-child,th:first-child{text-align:left}th{background:#eef1f6}
table.samples td,table.samples th{text-align:left;max-width:260px;overflow-wrap:anywhere;font-size:13px}
.plots img{max-width:100%;border:1px solid #e3e6ec;margin:6px 0}.muted{color:#667}
td.right{background:#eaf6ea}td.wrong{background:#fbeaea}code{background:#eef1f6;padding:0 3px;border-radius:3px}
"""

# Lets a headless browser (and the tests) see that every image decoded and no script or resource failed.
SELF_CHECK = """
window.addEventListener('error',function(){var d=document.documentElement.dataset;d.errors=String(Number(d.errors||0)+1)},true);
window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);
document.documentElement.dataset.images=i.filter(function(x){return x.complete&&x.naturalWidth>0}).length+'/'+i.length;
document.documentElement.dataset.rendered='yes'});
"""


EMPTY = "(empty answer)"
# A held-out answer is marked right or wrong by the per-row form of the first of these metrics the run measured.
JUDGES = (("exact_match", exact_match), ("accuracy", label_accuracy))


def _figure(width: float = 7.0, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(width, height))


def curves_png(run_dir: Path, summary: dict[str, Any]) -> str | None:
    """Train and validation loss against step, from metrics.jsonl (validation: the held-out rows, or under early
    stopping the rows set aside from train)."""
    train, held = read_curves(RunDir(run_dir).metrics_path)
    carved = (summary.get("early_stopping") or {}).get("validation_rows")
    held_label = f"validation loss ({carved} rows set aside from train)" if carved else "held-out loss"
    if not train and not held:
        return None
    from matplotlib import pyplot

    fig, ax = _figure()
    for curve, label, style in ((train, "train loss", ".-"), (held, held_label, "o-")):
        if curve:
            ax.plot([p.step for p in curve], [p.value for p in curve], style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    scored = metric_curves(run_dir)
    if scored:  # generation metrics watched during validation (early stopping on one of them)
        right = ax.twinx()
        for name, curve in scored.items():
            right.plot([s for s, _ in curve], [100 * v for _, v in curve], "s--", label=describe(name).label)
        right.set_ylabel("% (validation)")
        right.set_ylim(0, 100)
        more = right.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels)
    encoded = png_base64(fig)
    pyplot.close(fig)
    return encoded


def metric_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Percentage metrics logged at validations, by name, as (step, value)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in RunDir(run_dir).read_metrics():
        for name, value in record.items():
            if "eval_loss" in record and name in METRICS and describe(name).percent:
                curves.setdefault(name, []).append((record["step"], float(value)))
    return curves


def scores_png(summary: dict[str, Any]) -> str | None:
    """Zero-shot, each baseline and tuned side by side for every percentage metric."""
    names = [k for k in summary["after"] if describe(k).percent and k in summary["before"]]
    if not names:
        return None
    from matplotlib import pyplot

    columns = [("zero-shot", summary["before"]), *((label, m) for _, label, m in baselines(summary)),
               ("tuned", summary["after"])]
    fig, ax = _figure(height=3.0)
    width = 0.8 / len(columns)
    for i, (label, values) in enumerate(columns):
        bars = ax.bar([n + i * width for n in range(len(names))], [100 * values.get(k, 0.0) for k in names], width,
                      label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks([n + width * (len(columns) - 1) / 2 for n in range(len(names))], [describe(k).label for k in names])
    ax.set_ylabel("% of held-out rows")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(columns), frameon=False)  # never over a bar
    encoded = png_base64(fig)
    pyplot.close(fig)
    return encoded


def html_table(rows: list[Row], css: str = "") -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def inline_markdown(text: Any) -> str:
    """Escaped text with the Markdown the report's sentences use (`code`, **bold**) as HTML, not as characters."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def judge(summary: dict[str, Any]) -> tuple[str, Any] | None:
    """(metric, per-row scorer) that marks held-out answers right or wrong, or None when the run has neither."""
    return next(((name, score) for name, score in JUDGES if name in summary.get("after", {})), None)


def _answer_cell(answer: str | None, reference: str, scorer: Any) -> str:
    text = escape(answer or EMPTY)
    if scorer is None:
        return f"<td>{text}</td>"
    right = scorer(answer or "", reference) == 1.0
    return f'<td class="{"right" if right else "wrong"}">{"✓" if right else "✗"} {text}</td>'


def samples_table(samples: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    shown = [(name, label) for name, label, _ in baselines(summary) if any(s.get(name) is not None for s in samples)]
    header = ("prompt", "reference", "base (zero-shot)", *(f"base ({label})" for _, label in shown), "tuned")
    judged = judge(summary)
    scorer = judged[1] if judged else None
    body = "".join(
        f"<tr><td>{escape(s['prompt'])}</td><td>{escape(s['reference'])}</td>"
        + "".join(_answer_cell(answer, s["reference"], scorer)
                  for answer in (s["before"], *(s.get(name) for name, _ in shown), s["after"])) + "</tr>"
        for s in samples)
    legend = f'<p class="muted">✓ right, ✗ wrong, by {escape(describe(judged[0]).label)}.</p>' if judged else ""
    return (legend + '<table class="samples"><thead><tr>' + "".join(f"<th>{escape(c)}</th>" for c in header)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>{body}" if body else ""


def render_html(run_dir: Path, summary: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    plots = "".join(f'<img alt="{escape(alt)}" src="data:image/png;base64,{png}">'
                    for alt, png in (("loss curves", curves_png(run_dir, summary)), ("scores", scores_png(summary))) if png)
    leak = leakage(run_dir)
    parts = [
        f"<h1>tunelab run: {escape(run_dir.name)}</h1>",
        '<div class="verdict"><ul>' + "".join(f"<li>{inline_markdown(s)}</li>" for s in verdict(summary))
        + "</ul></div>",
        f'<p class="muted">{inline_markdown(training_line(summary))}</p>',
        _section("Curves and scores", f'<div class="plots">{plots}</div>' if plots else ""),
        _section("Held-out results", html_table([comparison_header(summary), *comparison_rows(summary)])),
        _section("Cost per answer", html_table(cost_table(summary))),
        _section("General ability (forgetting probe)",
                 html_table([FORGETTING_HEADER, *forgetting_rows(summary)])
                 if forgetting_rows(summary) else ""),
        _section("Confusion matrix (tuned)", html_table(confusion_rows(run_dir, summary))),
        _section("Leakage check", f"<pre>{escape(json.dumps(leak, indent=2))}</pre>" if leak is not None else ""),
        _section(f"Held-out examples ({len(samples)})", samples_table(samples, summary) if samples else ""),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>tunelab run {escape(run_dir.name)}</title><style>{STYLE}</style><script>{SELF_CHECK}</script>"
            "</head><body>" + "".join(parts) + "</body></html>\n")


def write_report(run_dir: Path, summary: dict[str, Any], n_samples: int = 10) -> None:
    """report.md and report.html in the run directory, from its summary and its first n samples."""
    samples = read_samples(run_dir, n_samples)
    write_atomic(run_dir / "report.md", render_markdown(run_dir, summary, samples))
    write_atomic(run_dir / "report.html", render_html(run_dir, summary, samples))
