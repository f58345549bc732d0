"""Row schemas and file readers. Every problem names its file, line and field.

Schemas: `text`; `prompt`/`completion`; OpenAI chat `messages` (system/user/assistant, with an
optional per-assistant-message `weight` 0/1); `text`/`label` classification; `prompt`/`chosen`/
`rejected` preference pairs, also read in OpenAI's DPO form (`input`/`preferred_output`/
`non_preferred_output`) and normalised to the former. Files: JSONL, CSV, Parquet, `datasets` dirs.

Keys outside a schema. In a chat message, an unknown key is an error that rejects the row, as in
OpenAI's own check: a misspelt `weight` would otherwise train on a turn meant to be masked. Tool
calls (`tool_calls`, `function_call`, `tool_call_id`) are errors too: training would drop the call
and teach the answer without it. A message's `name` is OpenAI's and accepted, with a warning: only
role and content reach the chat template. Top-level keys outside the format's fields (an `id`
column, OpenAI's `tools` or `metadata`) are warnings, since no schema field can hide among them:
a misspelt one shows up as a missing field. Warnings never reject a row. In Parquet and `datasets`
files a null inside a message is an absent key: Arrow gives every message each key any message has.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.paths import inside

FORMATS = ("text", "prompt_completion", "messages", "classification", "preference")
OPENAI_DPO = ("input", "preferred_output", "non_preferred_output")
ROLES = ("system", "user", "assistant")
TRAINED_KEYS = ("role", "content", "weight")
MESSAGE_KEYS = (*TRAINED_KEYS, "name")
TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
FIELDS = {"text": ("text",), "prompt_completion": ("prompt", "completion"), "messages": ("messages",),
          "classification": ("text", "label"), "preference": ("prompt", "chosen", "rejected", *OPENAI_DPO)}
WARNING_KINDS = ("ignored_key",)


@dataclass
class Row:
    """One record as read, with where it came from (line is 1-based; for tables, the data row number)."""

    line: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Problem:
    line: int
    field: str
    message: str
    kind: str
    raw: str | None = None  # the line as read, when it could not be parsed into fields

    @property
    def warning(self) -> bool:
        """A warning is listed but never rejects its row."""
        return self.kind in WARNING_KINDS

    def render(self, path: Path | str) -> str:
        where = f' field "{self.field}":' if self.field else ""
        return f"{path}:{self.line}:{' warning:' if self.warning else ''}{where} {self.message}"


class _Unreadable(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def read_rows(path: Path, columns: dict[str, str] | None = None) -> Iterator[Row | Problem]:
    """Yield each record of a data file as a Row, or a Problem when the record cannot be parsed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    for item in _raw_records(path):
        if isinstance(item, Row) and rename:
            item.fields = {rename.get(k, k): v for k, v in item.fields.items()}
        yield item


def _raw_records(path: Path) -> Iterator[Row | Problem]:
    if path.is_dir():
        yield from _read_datasets_dir(path)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        yield from _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'}; expected .jsonl, .csv, .tsv or .parquet")


def _read_jsonl(path: Path) -> Iterator[Row | Problem]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # editors on Windows add a BOM
            except UnicodeDecodeError as err:
                yield Problem(number, "", f"not valid UTF-8 (byte {err.start} of the line)", "encoding",
                              raw.decode("utf-8", "backslashreplace").rstrip("\n"))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield Problem(number, "", f"not valid JSON: {err.msg} at column {err.colno}", "json", text.rstrip("\n"))
                continue
            except (ValueError, RecursionError) as err:  # a number over 4300 digits; nesting too deep to parse
                yield Problem(number, "", f"not readable JSON: {str(err).split(':')[0]}", "json")
                continue
            if not isinstance(value, dict):
                yield Problem(number, "", f"expected a JSON object, got {_type_name(value)}", "json", text.rstrip("\n"))
                continue
            yield Row(number, value)


def _read_csv(path: Path, delimiter: str) -> Iterator[Row | Problem]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        yield from _csv_rows(reader)
    except csv.Error as err:  # e.g. a field over csv's size limit (131072 characters)
        raise DataError(f"{path}:{reader.line_num + 1}: not valid CSV: {err}") from None


def _csv_rows(reader: csv.DictReader) -> Iterator[Row | Problem]:
    for record in reader:
        number = reader.line_num
        if None in record:
            yield Problem(number, "", f"more values than the {len(reader.fieldnames or [])} header columns", "csv")
            continue
        yield Row(number, {k: v for k, v in record.items() if k is not None})


def _read_parquet(path: Path) -> Iterator[Row | Problem]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read Parquet: {err}") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield Row(number, _absent_nulls(record))


def _read_datasets_dir(path: Path) -> Iterator[Row | Problem]:
    import datasets

    _refuse_outside_files(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises FileNotFoundError or its own errors
        raise DataError(f"{path}: not a saved datasets directory: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{path}: holds splits {sorted(loaded)}; point at one split's directory")
    for number, record in enumerate(loaded, start=1):
        yield Row(number, _absent_nulls(dict(record)))


def _absent_nulls(record: dict[str, Any]) -> dict[str, Any]:
    """Arrow gives every struct (a chat message) each field any row has, null where a row had none: drop those."""
    return {key: _drop_null_fields(value) for key, value in record.items()}


def _drop_null_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_null_fields(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_null_fields(v) for v in value]
    return value


def _refuse_outside_files(path: Path) -> None:
    """state.json names a saved dataset's data files; datasets opens them wherever they point."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, TypeError, KeyError):
        return  # not a saved dataset: load_from_disk says so below
    for name in names:
        if not isinstance(name, str) or inside(path, name) is None:
            raise DataError(f'{path}/state.json: data file "{name}" lies outside the dataset directory; refusing it')


def detect_format(fields: dict[str, Any]) -> str | None:
    if "messages" in fields:
        return "messages"
    if "chosen" in fields or "rejected" in fields or "preferred_output" in fields:
        return "preference"
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    if "text" in fields and "label" in fields:
        return "classification"
    if "text" in fields:
        return "text"
    return None


def validate_row(row: Row, fmt: str) -> list[Problem]:
    """Every error of one row; an empty list means the row is usable."""
    return _errors(inspect_row(row, fmt))


def inspect_row(row: Row, fmt: str) -> list[Problem]:
    """Every problem of one row, warnings (`Problem.warning`) included."""
    checks = {"text": _check_text, "prompt_completion": _check_prompt_completion, "messages": _check_messages,
              "classification": _check_classification, "preference": _check_preference}
    try:
        found = checks[fmt](row)
    except _Unreadable as stop:
        found = [stop.problem]
    return found + [Problem(row.line, key, f"unknown key (expected {', '.join(FIELDS[fmt])}); ignored", "ignored_key")
                    for key in row.fields if key not in FIELDS[fmt]]


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


def normalize_row(fields: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A valid row in our field names: OpenAI's DPO form becomes prompt/chosen/rejected message lists."""
    if fmt != "preference" or "input" not in fields:
        return fields
    rest = {k: v for k, v in fields.items() if k not in OPENAI_DPO}
    return {"prompt": fields["input"]["messages"], "chosen": fields["preferred_output"],
            "rejected": fields["non_preferred_output"], **rest}


def _need_str(row: Row, key: str, *, allow_empty: bool = False) -> str:
    if key not in row.fields:
        raise _Unreadable(Problem(row.line, key, "missing; expected a string", "missing_field"))
    value = row.fields[key]
    if not isinstance(value, str):
        raise _Unreadable(Problem(row.line, key, f"expected a string, got {_type_name(value)}", "wrong_type"))
    if not allow_empty and not value.strip():
        raise _Unreadable(Problem(row.line, key, "empty or whitespace only", "empty"))
    return value


def _check_text(row: Row) -> list[Problem]:
    _need_str(row, "text")
    return []


def _check_prompt_completion(row: Row) -> list[Problem]:
    problems = []
    for key in ("prompt", "completion"):
        try:
            _need_str(row, key, allow_empty=(key == "prompt"))
        except _Unreadable as stop:
            problems.append(stop.problem)
    return problems


def _check_classification(row: Row) -> list[Problem]:
    problems = []
    try:
        _need_str(row, "text")
    except _Unreadable as stop:
        problems.append(stop.problem)
    label = row.fields.get("label", _MISSING)
    if label is _MISSING:
        problems.append(Problem(row.line, "label", "missing; expected a string or an integer", "missing_field"))
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        problems.append(Problem(row.line, "label", f"expected a string or an integer, got {_type_name(label)}",
                                "wrong_label"))
    elif isinstance(label, str) and not label.strip():
        problems.append(Problem(row.line, "label", "empty or whitespace only", "empty"))
    return problems


def _check_preference(row: Row) -> list[Problem]:
    if "input" in row.fields:
        return _check_openai_dpo(row)
    problems = []
    for key in ("prompt", "chosen", "rejected"):
        value = row.fields.get(key, _MISSING)
        if isinstance(value, list):
            problems.extend(_check_turns(row.line, key, value, need_assistant=(key != "prompt")))
            continue
        try:
            _need_str(row, key, allow_empty=(key == "prompt"))
        except _Unreadable as stop:
            problems.append(stop.problem)
    if not _errors(problems) and row.fields["chosen"] == row.fields["rejected"]:
        problems.append(Problem(row.line, "rejected", "same as chosen; a pair must differ", "same_pair"))
    return problems


def _check_openai_dpo(row: Row) -> list[Problem]:
    given = row.fields["input"]
    if not isinstance(given, dict) or not isinstance(given.get("messages"), list):
        return [Problem(row.line, "input.messages", f"expected a list of messages, got "
                        f"{_type_name(given.get('messages') if isinstance(given, dict) else given)}", "wrong_type")]
    problems = _check_turns(row.line, "input.messages", given["messages"], need_assistant=False)
    for key in OPENAI_DPO[1:]:
        problems.extend(_check_turns(row.line, key, row.fields.get(key, _MISSING), need_assistant=True))
    if not _errors(problems) and row.fields["preferred_output"] == row.fields["non_preferred_output"]:
        problems.append(Problem(row.line, "non_preferred_output", "same as preferred_output; a pair must differ",
                                "same_pair"))
    return problems


def _check_turns(line: int, where: str, messages: Any, need_assistant: bool) -> list[Problem]:
    if messages is _MISSING:
        return [Problem(line, where, "missing; expected a list of {role, content}", "missing_field")]
    if not isinstance(messages, list) or not messages:
        return [Problem(line, where, f"expected a non-empty list, got {_type_name(messages)}", "wrong_type")]
    problems = []
    for i, message in enumerate(messages):
        problems.extend(_check_message(line, f"{where}[{i}]", message))
    if not _errors(problems) and need_assistant and not any(m["role"] == "assistant" for m in messages):
        problems.append(Problem(line, where, "no assistant turn", "no_assistant"))
    return problems


def _check_messages(row: Row) -> list[Problem]:
    messages = row.fields.get("messages", _MISSING)
    problems = _check_turns(row.line, "messages", messages, need_assistant=False)
    if not _errors(problems) and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        problems.append(Problem(row.line, "messages", "no assistant turn to learn from", "no_assistant"))
    return problems


def _check_message(line: int, where: str, message: Any) -> list[Problem]:
    if not isinstance(message, dict):
        return [Problem(line, where, f"expected an object with role and content, got {_type_name(message)}", "wrong_type")]
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
    role = message.get("role", _MISSING)
    if role not in ROLES:
        got = "nothing" if role is _MISSING else json.dumps(role)
        return [Problem(line, f"{where}.role", f"expected one of {'|'.join(ROLES)}, got {got}", "bad_role")]
    content = message.get("content", _MISSING)
    if not isinstance(content, str):
        got = "nothing" if content is _MISSING else _type_name(content)
        return [Problem(line, f"{where}.content", f"expected a string, got {got}", "wrong_type")]
    if role == "assistant" and not content.strip():
        return [Problem(line, f"{where}.content", "empty assistant message", "empty")]
    weight = message.get("weight", 1)
    if "weight" in message and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
        return [Problem(line, f"{where}.weight", f"expected 0 or 1 on an assistant message, got {json.dumps(weight)}",
                        "bad_weight")]
    return []


_MISSING = object()


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
