"""A job's method and hyperparameters: "auto" resolved from the data by a documented rule, then written as the
settings of the `tunelab run` the job starts.

The rules (docs/serve.md):
- `n_epochs`: OpenAI's: aim at 3 passes, then keep examples x epochs inside [100, 25000] and epochs inside
  [1, 25] (few rows get more passes, many rows fewer);
- `batch_size`: 0.2% of the training examples, at least 1 and at most 256;
- `learning_rate_multiplier`: 1, a multiple of the method's own rate (`tunelab methods`: lora 1e-3);
- `beta` (dpo): 0.1, TRL's default;
- reinforcement: `compute_multiplier` 1 (4 completions per prompt; the multiplier scales them, at least 2),
  `eval_interval` once per epoch, `eval_samples` tunelab's eval.max_examples (200).

`method.tunelab` (tunelab's extension) then sets any registered strategy (`method`), task (`task`), and the
keys of their sections and of `train`/`eval`: never a path on the server, code to import, or the job's data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunelab.serve.errors import bad_request

EPOCH_TARGET, MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN, MAX_EPOCHS = 3, 100, 25000, 25
TASK_OF = {"supervised": "sft", "dpo": "dpo", "reinforcement": "rlhf"}
NUMBERS = {"batch_size": (int, 1, 256), "n_epochs": (int, 1, 50), "learning_rate_multiplier": (float, 1e-6, 100.0),
           "beta": (float, 1e-6, 10.0), "compute_multiplier": (float, 1e-3, 10.0), "eval_interval": (int, 1, 10**6),
           "eval_samples": (int, 1, 10**6)}
OWN = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
       "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
       "reinforcement": ("n_epochs", "batch_size", "learning_rate_multiplier", "compute_multiplier", "eval_interval",
                         "eval_samples", "reasoning_effort")}
# What the extension may not set: the job's own data, where it writes, and anything that reads a path or
# imports code on the server.
FIXED = ("data.train", "data.eval", "data.format", "data.columns", "output_dir", "model", "name", "trust_remote_code",
         "allow_pickle", "train.seeds", "rlhf.reward_function", "rlhf.reward_model", "rlhf.grader",
         "rlhf.allow_python_grader")


def auto_epochs(n: int) -> int:
    epochs = EPOCH_TARGET
    if n * epochs < MIN_EXAMPLES_SEEN:
        epochs = math.ceil(MIN_EXAMPLES_SEEN / max(n, 1))
    elif n * epochs > MAX_EXAMPLES_SEEN:
        epochs = MAX_EXAMPLES_SEEN // n
    return min(MAX_EPOCHS, max(1, epochs))


def auto_batch(n: int) -> int:
    return min(256, max(1, math.ceil(0.002 * n)))


def checked_numbers(given: dict[str, Any], method: str) -> dict[str, Any]:
    """The client's hyperparameters: each a number in range or "auto"; unknown names refused."""
    if not isinstance(given, dict):
        raise bad_request("hyperparameters: expected an object", f"method.{method}.hyperparameters")
    out = {}
    for key, value in given.items():
        param = f"method.{method}.hyperparameters.{key}"
        if key not in OWN[method]:
            raise bad_request(f"{param}: unknown for method {method}; expected one of {', '.join(OWN[method])}", param)
        if key == "reasoning_effort" or value == "auto" or value is None:
            out[key] = "auto" if value is None else value
            continue
        kind, low, high = NUMBERS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or not low <= value <= high:
            raise bad_request(f'{param}: expected "auto" or a{"n integer" if kind is int else " number"} from {low} '
                              f"to {high}, got {value!r}", param)
        out[key] = kind(value)
    return out


def resolve(method: str, given: dict[str, Any], n_train: int) -> dict[str, Any]:
    """Every hyperparameter of the method as a number (what the job object shows)."""
    chosen = {k: v for k, v in given.items() if v != "auto"}
    resolved: dict[str, Any] = {"n_epochs": chosen.get("n_epochs", auto_epochs(n_train)),
                                "batch_size": chosen.get("batch_size", auto_batch(n_train)),
                                "learning_rate_multiplier": chosen.get("learning_rate_multiplier", 1.0)}
    if method == "dpo":
        resolved["beta"] = chosen.get("beta", 0.1)
    if method == "reinforcement":
        multiplier = chosen.get("compute_multiplier", 1.0)
        generations = max(2, round(4 * multiplier))
        batch = chosen.get("batch_size", generations)
        resolved.update(batch_size=max(generations, batch - batch % generations), compute_multiplier=multiplier,
                        eval_interval=chosen.get("eval_interval", steps_per_epoch(n_train, batch)),
                        eval_samples=chosen.get("eval_samples", 200))
    return resolved


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def run_settings(method: str, hp: dict[str, Any], seed: int, n_train: int, default_rate: float,
                 grader: dict[str, Any] | None = None, python_graders: bool = False) -> dict[str, Any]:
    """The tunelab settings (dotted keys) the resolved hyperparameters stand for: a checkpoint every epoch, as
    OpenAI keeps one per epoch, and the training loss of every step, as its metrics events show it."""
    settings = {"task": TASK_OF[method], "train.epochs": hp["n_epochs"], "train.batch_size": hp["batch_size"],
                "train.learning_rate": default_rate * hp["learning_rate_multiplier"], "train.seed": seed,
                "train.save_steps": steps_per_epoch(n_train, hp["batch_size"]), "train.save_total_limit": 3,
                "train.logging_steps": 1}
    if method == "dpo":
        settings["dpo.beta"] = hp["beta"]
    if method == "reinforcement":
        settings.update({"rlhf.grader": grader, "rlhf.allow_python_grader": python_graders,
                         "rlhf.num_generations": max(2, round(4 * hp["compute_multiplier"])),
                         "train.eval_steps": hp["eval_interval"], "eval.max_examples": hp["eval_samples"]})
    return settings


def extension(given: Any) -> dict[str, Any]:
    """`method.tunelab`: dotted tunelab settings, refused where they would reach outside the job."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise bad_request('method.tunelab: expected an object of tunelab settings, e.g. {"method": "qlora", '
                          '"lora.r": 8}', "method.tunelab")
    for key, value in given.items():
        param = f"method.tunelab.{key}"
        if not isinstance(key, str) or any(key == f or key.startswith(f + ".") for f in FIXED):
            raise bad_request(f"{param}: set by the job itself (its files, model and output), not by the client",
                              param)
        if _reads_code(key, value) or _is_path_setting(key):
            raise bad_request(f"{param}: would read a path or import code on the server; not allowed", param)
    return dict(given)


def _reads_code(key: str, value: Any) -> bool:
    """A "module:function" value (eval.metrics) imports code; one that looks like a path (a teacher model's
    directory) reads the server's disk."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and (":" in v or "/" in v or "\\" in v or v.startswith(("~", "."))) for v in values)


def _is_path_setting(key: str) -> bool:
    """A setting whose type is a filesystem path (a teacher's directory, a reward run) reads the server's disk."""
    from tunelab.config import RunConfig, _section_type

    model: Any = RunConfig
    *sections, name = key.split(".")
    for part in sections:
        field = model.model_fields.get(part)
        model = _section_type(field.annotation) if field else None
        if model is None:
            return False
    field = model.model_fields.get(name)
    annotation = getattr(field, "annotation", None)
    return annotation is not None and (annotation is Path or Path in getattr(annotation, "__args__", ()))
