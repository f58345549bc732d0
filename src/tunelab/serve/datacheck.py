"""Training and validation files checked as OpenAI checks them, by tunelab's own row checks (`data.loading`).

A job's method says which rows it trains on: `supervised` chat `messages` (or prompt/completion), `dpo`
`{input: {messages}, preferred_output, non_preferred_output}`, `reinforcement` `messages` ending with the
user's turn, the row's other fields being the grader's `item`. A file of another shape is refused with
`invalid_training_file`; a row's problem names its line and field, with the error code of OpenAI's data
guidance; fewer than MIN_EXAMPLES rows is `invalid_n_examples`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from tunelab.data.checks import MISSING, check_turns, errors
from tunelab.data.loading import validate_file
from tunelab.data.rows import Problem, Row, read_rows
from tunelab.errors import DataError
from tunelab.serve.errors import bad_request

MIN_EXAMPLES = 10
SHOWN = 5
METHOD_FORMATS = {"supervised": ("messages", "prompt_completion"), "dpo": ("preference",)}
EXAMPLES = {
    "supervised": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "dpo": '{"input": {"messages": [{"role": "user", "content": "..."}]}, "preferred_output": [{"role": '
           '"assistant", "content": "..."}], "non_preferred_output": [{"role": "assistant", "content": "..."}]}',
    "reinforcement": '{"messages": [{"role": "user", "content": "..."}], "reference_answer": "..."}',
}
# tunelab's problem kinds as the error codes of OpenAI's data-format guidance
CODES = {"json": "data_type", "encoding": "data_type", "wrong_type": "data_type", "bad_role": "unrecognized_role",
         "unknown_key": "message_unrecognized_key", "unsupported": "message_unrecognized_key",
         "no_assistant": "example_missing_assistant_message", "empty": "missing_content",
         "bad_weight": "invalid_weight", "same_pair": "identical_preference_outputs",
         "last_not_user": "example_last_message_not_user"}


@dataclass
class FileCheck:
    """A usable file: its tunelab format, how many rows it holds, and the warnings to show as job events."""

    format: str
    rows: int
    warnings: list[str] = field(default_factory=list)


def check_file(path: Path, method: str, param: str, name: str) -> FileCheck:
    """The file's rows checked for `method`, or an ApiError (400) naming the line, field and code."""
    if method == "reinforcement":
        return _check_prompts(path, param, name)
    try:
        found = validate_file(path)
    except DataError as err:
        raise bad_request(_named(str(err), path, name), param, "invalid_training_file" if param == "training_file"
                          else "invalid_validation_file") from None
    if found.format not in METHOD_FORMATS[method]:
        raise bad_request(f"{name}: rows are tunelab's \"{found.format}\" shape, but a {method} job trains on rows "
                          f"like {EXAMPLES[method]}", param, f"invalid_{param}")
    problems = sorted(found.problems + _tool_rows(path), key=lambda p: p.line)
    return _verdict(problems, found.total, found.format, [w for w in found.warnings if w.field != "tools"], param,
                    name)


def _tool_rows(path: Path) -> list[Problem]:
    """Rows with `tools` (function definitions): tunelab renders only role and content through the chat template
    (and the bundled models' templates have no tools), so training would silently drop them; refused instead."""
    found = []
    for row in read_rows(path):
        if not isinstance(row, Row):
            continue
        given = row.fields.get("input")
        where = "tools" if "tools" in row.fields else \
            "input.tools" if isinstance(given, dict) and "tools" in given else None
        if where:
            found.append(Problem(row.line, where, "function definitions cannot be trained here: tunelab passes only "
                                 "role and content to the chat template, so the tools would be dropped; remove "
                                 f'"{where}"', "unsupported_tools"))
    return found


def _verdict(problems: list[Problem], total: int, fmt: str, warnings: list[Problem], param: str,
             name: str) -> FileCheck:
    if problems:
        raise bad_request(_problem_lines(problems, total, name), param, code_of(problems[0]))
    if param == "training_file" and total < MIN_EXAMPLES:
        raise bad_request(f"{name}: training file has {total} example(s), but must have at least {MIN_EXAMPLES}",
                          param, "invalid_n_examples")
    return FileCheck(fmt, total, [p.render(name) for p in warnings])


def code_of(problem: Problem) -> str:
    if problem.kind == "missing_field":
        return "missing_messages_list" if problem.field in ("messages", "input.messages") else "message_missing_key"
    if problem.kind == "wrong_type" and problem.field.endswith(".content"):
        return "missing_content"
    return CODES.get(problem.kind, problem.kind)


def _problem_lines(problems: list[Problem], total: int, name: str) -> str:
    lines = [f"{p.render(name)} ({code_of(p)})" for p in problems[:SHOWN]]
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return f"{len(problems)} problem(s) in {total} row(s): " + "; ".join(lines) + more


def _named(message: str, path: Path, name: str) -> str:
    """tunelab's messages name the file on disk; the client knows it by its name and id."""
    return message.replace(str(path), name)


def _check_prompts(path: Path, param: str, name: str) -> FileCheck:
    """Reinforcement rows: `messages` ending with the user's turn; every other field is the grader's item."""
    problems, total = [], 0
    for record in _records(path, name):
        total += 1
        if isinstance(record, Problem):
            problems.append(record)
        else:
            problems.extend(prompt_problems(record))
    if not total:
        raise bad_request(f"{name}: no rows; expected one JSON object per line like {EXAMPLES['reinforcement']}",
                          param, f"invalid_{param}")
    return _verdict(problems, total, "prompt", [], param, name)


def _records(path: Path, name: str) -> Iterator[Row | Problem]:
    try:
        yield from read_rows(path)
    except DataError as err:
        raise bad_request(_named(str(err), path, name), "training_file", "invalid_training_file") from None


def prompt_problems(row: Row) -> list[Problem]:
    messages = row.fields.get("messages", MISSING)
    found = errors(check_turns(row.line, "messages", messages, need_assistant=False))
    if not found and messages[-1]["role"] != "user":
        found.append(Problem(row.line, f"messages[{len(messages) - 1}].role", "a reinforcement example ends with "
                             f'the user\'s message, got "{messages[-1]["role"]}"', "last_not_user"))
    return found
