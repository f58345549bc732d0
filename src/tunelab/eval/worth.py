"""Is tuning worth it: the tuned model against the best prompting baseline, on quality and on what an answer
costs.

The prompting columns are zero-shot and each few-shot baseline (random and retrieved demos): every column
whose answers were generated and timed (summary.json `cost`). The best of them on the headline metric is
weighed against the tuned model:

- when the tuned model is not clearly better (the comparison's 95% interval, `eval.intervals`, holds no
  change, or the baseline is better), prompting may be enough, at the cost per answer shown;
- otherwise tuning wins by the difference shown, and pays back its training time once the seconds it saves
  per answer add up to it: break-even answers = tuning seconds / (baseline's seconds per answer - tuned's).

Seconds per answer are the one-at-a-time timing (a service answering lone requests) where measured, else the
batched one; the tuned model's are those of its adapter merged into the base weights (`tuned_merged`, as
`tunelab export` serves it) where the method merges.
"""

from __future__ import annotations

from typing import Any

from tunelab.scoring.metrics import describe

TUNED, MERGED = "tuned", "tuned_merged"


def prompting_columns(summary: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(key, label, value on `metric`) of zero-shot and each baseline with a cost, in the summary's order."""
    cost = summary.get("cost") or {}
    labels = {"zero_shot": "zero-shot", **{k: b["label"] for k, b in (summary.get("baselines") or {}).items()}}
    values = {"zero_shot": summary["before"], **{k: b["metrics"] for k, b in (summary.get("baselines") or {}).items()}}
    return [(key, labels[key], values[key]) for key in labels if key in cost]


def seconds_key(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The timing both columns have: one at a time where both were timed so, else batched."""
    return "seconds_one" if "seconds_one" in a and "seconds_one" in b else "seconds_batched"


def weigh(summary: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The best prompting column against the tuned model on `metric` and on cost; None without costs."""
    cost = summary.get("cost") or {}
    found = [(key, label, m[metric]) for key, label, m in prompting_columns(summary) if m.get(metric) is not None]
    if TUNED not in cost or not found or summary["after"].get(metric) is None:
        return None
    higher = describe(metric).higher_is_better
    key, label, value = max(found, key=lambda f: f[2] if higher else -f[2])  # the first of equals: the cheapest
    tuned = summary["after"][metric]
    c = ((summary.get("comparisons") or {}).get(key) or {}).get(metric)
    tuned_better = c["direction"] == "better" if c else (tuned > value if higher else tuned < value)
    served = MERGED if MERGED in cost else TUNED
    timing = seconds_key(cost[key], cost[served])
    saving = cost[key][timing] - cost[served][timing]
    train_seconds = float((summary.get("train") or {}).get("seconds") or 0.0)
    return {"metric": metric, "best": key, "label": label, "best_value": value, "tuned_value": tuned,
            "comparison": c, "prompting_may_be_enough": not tuned_better, "tuned_as": served,
            "timing": "one at a time" if timing == "seconds_one" else "batched",
            "best_seconds": cost[key][timing], "tuned_seconds": cost[served][timing], "seconds_saved": saving,
            "best_prompt_tokens": cost[key]["prompt_tokens"], "tuned_prompt_tokens": cost[served]["prompt_tokens"],
            "prompt_tokens_saved": cost[key]["prompt_tokens"] - cost[served]["prompt_tokens"],
            "train_seconds": train_seconds, "break_even_answers": break_even(train_seconds, saving)}


def break_even(train_seconds: float, saving: float) -> float | None:
    """Answers after which the tuning time is repaid by the seconds each tuned answer saves; None if none is saved."""
    return train_seconds / saving if saving > 0 else None


def worth_sentence(w: dict[str, Any] | None, fmt: Any, interval_words: Any) -> str | None:
    """The verdict's line on prompting against tuning, with its arithmetic; `fmt` and `interval_words` are the
    report's formatting of a metric value and of a comparison."""
    if w is None:
        return None
    name, c = w["metric"], w["comparison"]
    scores = f"{describe(name).label} {fmt(name, w['best_value'])} {w['label']}, {fmt(name, w['tuned_value'])} tuned"
    versus = f"{interval_words(name, c)} for tuning" if c else "no interval"
    per = f"({w['timing']}{', tuned model merged' if w.get('tuned_as') == MERGED else ''})"
    if w["prompting_may_be_enough"]:
        return (f"Prompting may be enough: {scores} ({versus}); {w['label']} costs {w['best_prompt_tokens']:.0f} "
                f"prompt tokens and {w['best_seconds']:.3f} s per answer {per}, tuned "
                f"{w['tuned_prompt_tokens']:.0f} tokens and {w['tuned_seconds']:.3f} s.")
    head = f"Tuning beats the best prompting baseline, {w['label']}: {scores} ({versus})"
    saved = (f"{w['best_seconds']:.3f} s - {w['tuned_seconds']:.3f} s = {w['seconds_saved']:.3f} s and "
             f"{w['prompt_tokens_saved']:.0f} prompt tokens saved per answer {per}")
    if w["break_even_answers"] is None:
        return f"{head}; {saved}: no time saved, so the {w['train_seconds']:.0f} s of tuning are not repaid in speed."
    return (f"{head}; {saved}; the {w['train_seconds']:.0f} s of tuning are repaid after "
            f"{w['train_seconds']:.0f} / {w['seconds_saved']:.3f} = {w['break_even_answers']:,.0f} answers.")


COST_HEADER = ("column", "prompt tokens", "generated tokens", "s/answer one at a time", "s/answer batched",
               "peak memory MiB")


def cost_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Each column's cost per answer (means over its answers), prompting columns first, then tuned (as trained,
    and merged where the method merges)."""
    cost = summary.get("cost") or {}
    named = [(key, label) for key, label, _ in prompting_columns(summary)] + \
        [(key, label) for key, label in ((TUNED, "tuned"), (MERGED, "tuned, merged")) if key in cost]
    return [(label, f"{cost[key]['prompt_tokens']:.1f}", f"{cost[key]['generated_tokens']:.1f}",
             f"{cost[key]['seconds_one']:.3f}" if "seconds_one" in cost[key] else "-",
             f"{cost[key]['seconds_batched']:.3f}", f"{cost[key]['peak_memory_bytes'] / 2**20:,.0f}")
            for key, label in named]
