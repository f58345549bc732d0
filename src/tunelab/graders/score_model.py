"""score_model: a local causal language model as the judge. It reads the grader's `input` messages (templates
filled in from the sample and item) through its chat template and answers; the score is the `result` (or
`score`) of a JSON object it writes, else the first number in its answer, and must lie inside `range`
(default [0, 1]). An answer without one scores the range's low end, flagged `model_grader_parse_error`.

The judge is any `tunelab models` causal LM or a local checkpoint directory, loaded once per process. Greedy
unless `sampling_params.temperature` > 0; `seed` seeds that sampling without moving the caller's random state.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from tunelab.graders.base import Graded, GraderType, Options, check_template, check_text, fail, number, one_of, \
    register_grader, rendered, shown

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
SAMPLING = ("max_completions_tokens", "reasoning_effort", "seed", "temperature", "top_p")
DEFAULT_TOKENS = 64
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def check(spec: dict[str, Any], where: str) -> None:
    check_judge(spec["model"], f"{where}.model")
    messages = spec["input"]
    if not isinstance(messages, list) or not messages:
        fail(f"{where}.input", f"expected a non-empty list of messages {{role, content}}, got {shown(messages)}")
    for i, message in enumerate(messages):
        check_message(message, f"{where}.input[{i}]")
    low, high = judge_range(spec, where)
    if low >= high:
        fail(f"{where}.range", f"expected [low, high] with low < high, got {shown(spec['range'])}")
    check_sampling(spec.get("sampling_params"), f"{where}.sampling_params")


def check_judge(model: Any, where: str) -> None:
    from tunelab.models.registry import BUNDLED

    judges = [name for name, m in BUNDLED.items() if m.kind == "causal-lm"]
    if not isinstance(model, str) or not (model in judges or (model not in BUNDLED and Path(model).expanduser()
                                                             .is_dir())):
        fail(where, f"{shown(model)} is not a local judge; expected a causal LM of `tunelab models` "
                    f"({'|'.join(judges)}) or a checkpoint directory")


def check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        fail(where, f"expected a message {{role, content}}, got {shown(message)}")
    for key in message:
        if key not in ("role", "content", "type"):
            fail(f"{where}.{key}", "unknown field (expected role, content, type)")
    one_of(f"{where}.role", message.get("role"), ROLES)
    if message.get("type", "message") != "message":
        fail(f"{where}.type", f'expected "message", got {shown(message["type"])}')
    if "content" not in message:
        fail(f"{where}.content", "required")
    parts = message["content"] if isinstance(message["content"], list) else [message["content"]]
    for j, part in enumerate(parts):
        check_part(part, f"{where}.content" + (f"[{j}]" if isinstance(message["content"], list) else ""))


def check_part(part: Any, where: str) -> None:
    if isinstance(part, str):
        check_text(part, where)
        return
    if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
        kind = part.get("type") if isinstance(part, dict) else part
        fail(f"{where}.type" if isinstance(part, dict) else where,
             f"expected text ({'|'.join(TEXT_PARTS)} or a string), got {shown(kind)}: a local judge reads text only")
    check_template(part, "text", where)


def judge_range(spec: dict[str, Any], where: str) -> tuple[float, float]:
    given = spec.get("range", [0, 1])
    if not isinstance(given, list) or len(given) != 2:
        fail(f"{where}.range", f"expected two numbers [low, high], got {shown(given)}")
    return number(f"{where}.range[0]", given[0]), number(f"{where}.range[1]", given[1])


def check_sampling(params: Any, where: str) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        fail(where, f"expected an object ({', '.join(SAMPLING)}), got {shown(params)}")
    for key, value in params.items():
        if key not in SAMPLING:
            fail(f"{where}.{key}", f"unknown field (expected {', '.join(SAMPLING)})")
        if value is None or key == "reasoning_effort":  # a local model has no reasoning effort: accepted, unused
            continue
        if key in ("max_completions_tokens", "seed") and (isinstance(value, bool) or not isinstance(value, int)):
            fail(f"{where}.{key}", f"expected an integer, got {shown(value)}")
        low = {"max_completions_tokens": 1, "temperature": 0, "top_p": 0}.get(key)
        number(f"{where}.{key}", value, low, 1 if key == "top_p" else None)
        if key == "top_p" and value == 0:
            fail(f"{where}.top_p", "expected a number above 0 and at most 1, got 0")


def message_texts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, template) per input message; a list of parts is joined into one text, and a developer message is
    the system message of a local chat template."""
    out = []
    for message in spec["input"]:
        parts = message["content"] if isinstance(message["content"], list) else [message["content"]]
        text = "".join(p if isinstance(p, str) else p["text"] for p in parts)
        out.append(("system" if message["role"] == "developer" else message["role"], text))
    return out


@functools.lru_cache(maxsize=2)
def judge(model: str) -> tuple[Any, Any]:
    from tunelab.errors import ModelError
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair
    from tunelab.models.registry import resolve_model

    tokenizer, loaded = load_pair(resolve_model(model), ModelSpec("causal_lm"), LoadRules())
    if not tokenizer.chat_template:
        raise ModelError(f'grader judge "{model}": its tokenizer has no chat template to read the input messages')
    return tokenizer, loaded.eval()


def parse_score(answer: str) -> float | None:
    """The judge's score: a JSON object's `result` or `score`, else the first number it wrote."""
    try:
        given = json.loads(answer)
    except ValueError:
        given = None
    if isinstance(given, dict):
        value = given.get("result", given.get("score"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return float(given)
    found = NUMBER.search(answer)
    return float(found.group()) if found else None


def grade(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any], options: Options) -> list[Graded]:
    roles, templates = zip(*message_texts(spec))
    filled = [rendered(list(templates), s, i) for s, i in zip(samples, items)]
    chats = [[{"role": r, "content": c} for r, c in zip(roles, texts)] for texts in filled
             if not isinstance(texts, Graded)]
    answers, usage = ask_judge(spec, chats)
    low, high = judge_range(spec, "grader")
    out = []
    for texts in filled:
        if isinstance(texts, Graded):
            out.append(texts)
            continue
        answer, tokens = next(answers), next(usage)
        score = parse_score(answer)
        if score is None or not low <= score <= high:
            found = "no number" if score is None else f"{score:g}, outside [{low:g}, {high:g}]"
            out.append(Graded(low, {"model_grader_parse_error": True}, token_usage={spec["model"]: tokens},
                              details=f"the judge answered {answer[:200]!r}: {found}"))
        else:
            out.append(Graded(score, token_usage={spec["model"]: tokens}))
    return out


def ask_judge(spec: dict[str, Any], chats: list[list[dict[str, str]]]) -> tuple[Any, Any]:
    """The judge's answers to the chats and the tokens of each (prompt, completion, total; the completion's counted
    by encoding the answer again, as generation returns text)."""
    import torch

    from tunelab.scoring.generate import generate

    tokenizer, model = judge(spec["model"])
    params = {k: v for k, v in (spec.get("sampling_params") or {}).items() if v is not None}
    prompts = [tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for chat in chats]
    with torch.random.fork_rng():  # the judge's sampling leaves the caller's random state as it was
        if "seed" in params:
            torch.manual_seed(params["seed"])
        answers = generate(model, tokenizer, prompts, params.get("max_completions_tokens", DEFAULT_TOKENS),
                           batch_size=16, temperature=params.get("temperature", 0.0), top_p=params.get("top_p", 1.0))
    usage = []
    for prompt, answer in zip(prompts, answers):
        written = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        usage.append({"prompt_tokens": len(prompt), "completion_tokens": written,
                      "total_tokens": len(prompt) + written})
    return iter(answers), iter(usage)


register_grader(GraderType("score_model", ("input", "model"), ("range", "sampling_params"), check, grade))
