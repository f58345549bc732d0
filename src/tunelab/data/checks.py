"""Field checks the row shapes share: a required string, and a list of chat turns with their keys.

In a chat message, an unknown key is an error that rejects the row, as in OpenAI's own check: a
misspelt `weight` would otherwise train on a turn meant to be masked. Tool calls (`tool_calls`,
`function_call`, `tool_call_id`) are errors too: training would drop the call and teach the answer
without it. A message's `name` is OpenAI's and accepted, with a warning: only role and content reach
the chat template.
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.data.rows import Problem, Row, type_name

ROLES = ("system", "user", "assistant")
TRAINED_KEYS = ("role", "content", "weight")
MESSAGE_KEYS = (*TRAINED_KEYS, "name")
TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
MISSING = object()


class Unreadable(Exception):
    """A problem that stops the checks of its row (the rest of the row cannot be read past it)."""

    def __init__(self, problem: Problem):
        self.problem = problem


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


def need_str(row: Row, key: str, *, allow_empty: bool = False) -> str:
    if key not in row.fields:
        raise Unreadable(Problem(row.line, key, "missing; expected a string", "missing_field"))
    value = row.fields[key]
    if not isinstance(value, str):
        raise Unreadable(Problem(row.line, key, f"expected a string, got {type_name(value)}", "wrong_type"))
    if not allow_empty and not value.strip():
        raise Unreadable(Problem(row.line, key, "empty or whitespace only", "empty"))
    if value and not value.strip():  # "" may mean "no prompt"; spaces alone are a slip
        raise Unreadable(Problem(row.line, key, 'whitespace only; write "" for none', "empty"))
    return value


def string_problems(row: Row, keys: tuple[str, ...], may_be_empty: tuple[str, ...] = ()) -> list[Problem]:
    """need_str on each key, every key's problem listed (not only the first)."""
    problems = []
    for key in keys:
        try:
            need_str(row, key, allow_empty=key in may_be_empty)
        except Unreadable as stop:
            problems.append(stop.problem)
    return problems


def check_turns(line: int, where: str, messages: Any, need_assistant: bool) -> list[Problem]:
    if messages is MISSING:
        return [Problem(line, where, "missing; expected a list of {role, content}", "missing_field")]
    if not isinstance(messages, list) or not messages:
        return [Problem(line, where, f"expected a non-empty list, got {type_name(messages)}", "wrong_type")]
    problems = []
    for i, message in enumerate(messages):
        problems.extend(_check_message(line, f"{where}[{i}]", message))
    if not errors(problems) and need_assistant and not any(m["role"] == "assistant" for m in messages):
        problems.append(Problem(line, where, "no assistant turn", "no_assistant"))
    return problems


def _check_message(line: int, where: str, message: Any) -> list[Problem]:
    if not isinstance(message, dict):
        return [Problem(line, where, f"expected an object with role and content, got {type_name(message)}",
                        "wrong_type")]
    problems = [_key_problem(line, f"{where}.{key}", key) for key in message if key not in TRAINED_KEYS]
    return problems + _check_role_content_weight(line, where, message)


def _key_problem(line: int, where: str, key: str) -> Problem:
    if key == "name":
        return Problem(line, where, "ignored: only role and content reach the chat template", "ignored_key")
    if key in TOOL_KEYS:
        return Problem(line, where, "tool calls are not supported: training would drop the call and learn the "
                                    "message without it", "unsupported")
    return Problem(line, where, f"unknown key (expected {', '.join(MESSAGE_KEYS)})", "unknown_key")


def _check_role_content_weight(line: int, where: str, message: dict[str, Any]) -> list[Problem]:
    role = message.get("role", MISSING)
    if role not in ROLES:
        got = "nothing" if role is MISSING else json.dumps(role)
        return [Problem(line, f"{where}.role", f"expected one of {'|'.join(ROLES)}, got {got}", "bad_role")]
    content = message.get("content", MISSING)
    if not isinstance(content, str):
        got = "nothing" if content is MISSING else type_name(content)
        return [Problem(line, f"{where}.content", f"expected a string, got {got}", "wrong_type")]
    if role == "assistant" and not content.strip():
        return [Problem(line, f"{where}.content", "empty assistant message", "empty")]
    if content and not content.strip():
        return [Problem(line, f"{where}.content", 'whitespace only; write "" for none', "empty")]
    weight = message.get("weight", 1)
    if "weight" in message and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
        return [Problem(line, f"{where}.weight", f"expected 0 or 1 on an assistant message, got {json.dumps(weight)}",
                        "bad_weight")]
    return []
