"""Graders in OpenAI's shapes (string_check, text_similarity, score_model, multi, python): a model's answer
(`sample`) and its data row (`item`) in, a reward out. They are the rewards of reinforcement fine-tuning
(`rlhf.grader`) and what the service's /fine_tuning/alpha/graders/validate and /run answer.

    validate_grader(spec)                      -> None, or ConfigError naming the field: `grader.operation: ...`
    run_grader(spec, sample, item)             -> {"reward", "metadata", "sub_rewards", ...} as OpenAI's run
    grade_batch(spec, samples, items, options) -> [Graded], one per sample (batched judges and embeddings)

A sample is `{"output_text": str, "output_json": ...}`; `output_json` is parsed from the text when it is JSON
and not given. Each type is a module here that registers itself (base.register_grader).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tunelab.errors import ConfigError
# Each type registers itself on import, in OpenAI's order (the order error messages list them in).
from tunelab.graders import string_check, text_similarity, score_model, multi, python  # noqa: F401, I001
from tunelab.graders.base import ERROR_DETAILS, ERROR_FLAGS, GRADERS, Graded, Options, check_grader, fail, shown
from tunelab.graders.template import Path, variables

__all__ = ["Graded", "Options", "grade_batch", "item_paths", "python_paths", "run_grader", "sample_of",
           "validate_grader"]


def validate_grader(spec: dict[str, Any]) -> None:
    """Refuse a grader spec that OpenAI's validation would refuse, or that cannot run here (a judge that is not a
    local model, meteor without WordNet): ConfigError naming the field path and what was expected."""
    check_grader(spec, "grader")


def python_paths(spec: dict[str, Any], where: str = "grader") -> list[str]:
    """Where a (validated) spec has python graders: what must be allowed before it runs."""
    if spec["type"] == "python":
        return [where]
    if spec["type"] == "multi":
        return [p for key, sub in spec["graders"].items() for p in python_paths(sub, f"{where}.graders.{key}")]
    return []


def refuse_python(spec: dict[str, Any], where: str = "grader", how: str = "allow_python=True") -> None:
    found = python_paths(spec, where)
    if found:
        raise ConfigError(f"{found[0]}.type: python graders run the caller's source code and are off here; "
                          f"enable them with {how} only for code you trust")


def item_paths(spec: dict[str, Any]) -> list[Path]:
    """The item variables a (validated) spec's templates read, each once, in order: what every data row needs."""
    texts: list[str] = []
    if spec["type"] in ("string_check", "text_similarity"):
        texts = [spec["input"], spec["reference"]]
    elif spec["type"] == "score_model":
        texts = [text for _, text in score_model.message_texts(spec)]
    elif spec["type"] == "multi":
        return list(dict.fromkeys(p for sub in spec["graders"].values() for p in item_paths(sub)))
    return list(dict.fromkeys(p for text in texts for p in variables(text) if p[0] == "item"))


def sample_of(sample: Any) -> dict[str, Any]:
    """The sample namespace: `output_text`, and `output_json` parsed from it when it is JSON and not given."""
    if not isinstance(sample, dict) or not isinstance(sample.get("output_text"), str):
        fail("sample.output_text", f"expected the model's answer as a string, got {shown(sample)}")
    if "output_json" in sample:
        return dict(sample)
    try:
        parsed = json.loads(sample["output_text"])
    except ValueError:
        parsed = None
    return {**sample, "output_json": parsed}


def grade_batch(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any],
                options: Options = Options()) -> list[Graded]:
    """Grades of a validated spec, one per (sample, item); a python grader only when `options` allow it."""
    if not options.allow_python:
        refuse_python(spec)
    return GRADERS[spec["type"]].grade(spec, [sample_of(s) for s in samples], items, options)


def run_grader(spec: dict[str, Any], sample: dict[str, Any], item: Any, *, allow_python: bool = False,
               options: Options | None = None) -> dict[str, Any]:
    """Grade one sample as OpenAI's /fine_tuning/alpha/graders/run answers: reward, metadata (name, type, every
    error flag, execution_time, scores, token_usage, sampled_model_name), sub_rewards and token use per model:
    exactly the fields of the openai SDK's GraderRunResponse (grade_batch's Graded.details says more in words)."""
    validate_grader(spec)
    options = options or Options(allow_python=allow_python)
    start = time.perf_counter()
    graded = grade_batch(spec, [sample], [item], options)[0]
    return response(spec, graded, time.perf_counter() - start)


def response(spec: dict[str, Any], graded: Graded, seconds: float) -> dict[str, Any]:
    errors = {**dict.fromkeys(ERROR_FLAGS, False), **dict.fromkeys(ERROR_DETAILS), **graded.errors}
    usage = sum(tokens.get("total_tokens", 0) for tokens in graded.token_usage.values())
    return {
        "reward": graded.reward,
        "metadata": {"name": spec["name"], "type": spec["type"], "errors": errors, "execution_time": seconds,
                     "scores": dict(graded.sub_rewards), "token_usage": usage if graded.token_usage else None,
                     "sampled_model_name": spec.get("model") if spec["type"] == "score_model" else None},
        "sub_rewards": dict(graded.sub_rewards),
        "model_grader_token_usage_per_model": graded.token_usage,
    }
