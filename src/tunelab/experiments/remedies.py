"""What `tunelab improve` tries for each finding of a run: one table, finding kind -> remedies, each remedy
the config keys it moves, their search ranges and why it helps.

A range is data: a list of choices or {low, high, log}, where a value written "x0.5" is that multiple of the
run's own setting (a lower learning rate is below the rate the run used, whatever that was). A key the run's
method does not read (lora.r under method=full) or whose setting is unusable as a base (max_steps=-1) is left
out of the remedy; a remedy left with no key is not tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.experiments.space import Dimension, check_dimension, parse_dimension
from tunelab.experiments.sweep import config_value

OVERFITTING, UNDERFITTING, FORGETTING, TOO_LITTLE_DATA = "overfitting", "underfitting", "forgetting", "too little data"
FEW_ROWS = 500  # below this many training rows an overfitting run is also short of data (see findings)


@dataclass(frozen=True)
class Remedy:
    name: str
    why: str
    space: dict[str, Any]  # config key -> [choices] or {low, high, log}; "xF" is F times the run's own value


LOWER_RATE = Remedy("lower learning rate", "smaller steps fit the training rows less closely and move the base "
                    "model less", {"train.learning_rate": {"low": "x0.1", "high": "x0.7", "log": True}})
SMALLER_RANK = Remedy("smaller rank", "fewer trainable parameters can memorise less and change the base model "
                      "less", {"lora.r": ["x0.25", "x0.5"]})
REMEDIES: dict[str, list[Remedy]] = {
    OVERFITTING: [
        Remedy("early stopping", "stop at the step validation likes best and keep those weights, validating "
               "twice as often so the minimum is not missed",
               {"train.early_stopping_patience": [1, 2, 3], "train.eval_steps": ["x0.5"]}),
        LOWER_RATE,
        SMALLER_RANK,
        Remedy("weight decay", "pulls the trained weights toward zero, a classic brake on memorising",
               {"train.weight_decay": {"low": 0.01, "high": 0.2, "log": True}}),
        Remedy("lora dropout", "drops adapter inputs at random while training, so no single path memorises",
               {"lora.dropout": {"low": 0.05, "high": 0.3}}),
    ],
    UNDERFITTING: [
        Remedy("more steps", "the training loss had not settled: more passes over the rows (early stopping "
               "still keeps the best step)", {"train.epochs": {"low": "x1.5", "high": "x4"},
                                              "train.max_steps": {"low": "x1.5", "high": "x4"}}),
        Remedy("higher learning rate", "larger steps reach a lower training loss in the same budget",
               {"train.learning_rate": {"low": "x1.5", "high": "x5", "log": True}}),
        Remedy("larger rank", "more trainable parameters can fit more of the task", {"lora.r": ["x2", "x4"]}),
        Remedy("full fine-tuning", "every weight trains (about 2.4x a LoRA step's time), at a full "
               "fine-tune's rate", {"method": ["full"], "train.learning_rate": {"low": 1e-5, "high": 1e-4,
                                                                                 "log": True}}),
    ],
    FORGETTING: [
        Remedy("replay general text", "mixing shipped general text into training keeps general ability in use",
               {"data.replay_fraction": {"low": 0.1, "high": 0.4}}),
        LOWER_RATE,
        SMALLER_RANK,
    ],
    TOO_LITTLE_DATA: [
        Remedy("synthetic rows", "more rows to fit are harder to memorise: `tunelab data synth` writes as many new "
               "rows as the fit rows, from them, with the run's base model as teacher, deduplicated against them "
               "and leakage-checked against the validation rows (and the held-out set, for the held-out run)",
               {"data.train": ["synthetic"]}),
    ],
}


def findings(summary: dict[str, Any] | None, train_rows: int | None) -> list[dict[str, str]]:
    """The run's findings improve acts on: [{kind, evidence}], from summary.json's diagnosis and forgetting.
    Too little data is an overfitting run with fewer than FEW_ROWS training rows."""
    if not summary or not summary.get("diagnosis"):
        return []
    diagnosis = summary["diagnosis"]
    found = [{"kind": f["diagnosis"], "evidence": f["evidence"]} for f in diagnosis.get("findings", [])
             if f.get("diagnosis") in (OVERFITTING, UNDERFITTING)]
    forgetting = summary.get("forgetting") or {}
    if forgetting.get("flagged"):
        found.append({"kind": FORGETTING, "evidence": "general ability fell beyond its threshold and its noise "
                      f"(general-text perplexity {100 * forgetting['perplexity_change']:+.1f}%)"})
    overfit = any(f["kind"] == OVERFITTING for f in found)
    if overfit and train_rows is not None and train_rows < FEW_ROWS:
        found.append({"kind": TOO_LITTLE_DATA, "evidence": f"overfitting on {train_rows} training rows "
                      f"(fewer than {FEW_ROWS})"})
    return found


def remedies_for(kinds: list[str], raw: dict[str, Any], config: Any,
                 files: dict[str, str] | None = None) -> list[tuple[Remedy, list[Dimension]]]:
    """Each remedy the findings name (once, in table order) with its dimensions made concrete for this run's
    settings and checked against the config's validators; remedies with nothing to move are left out.
    `files` names the data files a remedy may choose (data.train: "synthetic" -> its path), once written."""
    chosen: list[Remedy] = []
    for kind in dict.fromkeys(kinds):
        chosen += [r for r in REMEDIES[kind] if r not in chosen]
    out = []
    for remedy in chosen:
        dims = [dim for key, spec in remedy.space.items()
                if (dim := dimension(remedy, key, spec, raw, config, files or {}))]
        if dims:
            out.append((remedy, dims))
    return out


def dimension(remedy: Remedy, key: str, spec: Any, raw: dict[str, Any], config: Any,
              files: dict[str, str]) -> Dimension | None:
    """The remedy's range for `key` in this run's terms, or None when the key does not apply to the run."""
    if key == "data.train":  # a file improve writes (synthetic rows): offered once it exists
        spec = [files[name] for name in spec if name in files]
        if not spec:
            return None
    section = key.split(".")[0]
    if "." in key and section not in ("train", "data", "eval") and section not in raw:
        return None  # a method's own section (lora.r) that the run's method does not have
    if key == "train.epochs" and config.train.max_steps > 0:
        return None  # max_steps decides the length; epochs is unread
    base = config_value(config, key)
    concrete = relative(spec, base)
    if concrete is None:
        return None
    where = Path(f"improve remedy {remedy.name!r}")
    dim = check_dimension(where, raw, parse_dimension(where, key, concrete))
    dim.name = f"{remedy.name}/{key}"
    return dim


def relative(spec: Any, base: Any) -> Any:
    """`spec` with each "xF" replaced by F times `base` (an integer key stays an integer, at least 1), or None
    when a multiple is asked of a base that is not a positive number."""
    def scale(value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith("x")):
            return value
        if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 0:
            raise ValueError
        scaled = float(value[1:]) * base
        return max(1, round(scaled)) if isinstance(base, int) else scaled

    try:
        if isinstance(spec, list):
            return list(dict.fromkeys(scale(v) for v in spec if scale(v) != base)) or None
        return {**spec, "low": scale(spec["low"]), "high": scale(spec["high"])}
    except ValueError:
        return None

