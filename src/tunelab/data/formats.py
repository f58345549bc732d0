"""Row schemas and file readers. Every problem names its file, line and field.

Schemas: `text`; `prompt`/`completion`; OpenAI chat `messages` (system/user/assistant, with an
optional per-assistant-message `weight` 0/1). Files: JSONL, CSV, Parquet and `datasets` directories.
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

FORMATS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")


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

    def render(self, path: Path | str) -> str:
        where = f' field "{self.field}":' if self.field else ""
        return f"{path}:{self.line}:{where} {self.message}"


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
                yield Problem(number, "", f"not valid UTF-8 (byte {err.start} of the line)", "encoding")
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield Problem(number, "", f"not valid JSON: {err.msg} at column {err.colno}", "json")
                continue
            except (ValueError, RecursionError) as err:  # a number over 4300 digits; nesting too deep to parse
                yield Problem(number, "", f"not readable JSON: {str(err).split(':')[0]}", "json")
                continue
            if not isinstance(value, dict):
                yield Problem(number, "", f"expected a JSON object, got {_type_name(value)}", "json")
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
        yield Row(number, record)


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
        yield Row(number, dict(record))


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
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    if "text" in fields:
        return "text"
    return None


def validate_row(row: Row, fmt: str) -> list[Problem]:
    """Every schema problem of one row; an empty list means the row is usable."""
    checks = {"text": _check_text, "prompt_completion": _check_prompt_completion, "messages": _check_messages}
    try:
        return checks[fmt](row)
    except _Unreadable as stop:
        return [stop.problem]


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


def _check_messages(row: Row) -> list[Problem]:
    messages = row.fields.get("messages", _MISSING)
    if messages is _MISSING:
        return [Problem(row.line, "messages", "missing; expected a list of {role, content}", "missing_field")]
    if not isinstance(messages, list) or not messages:
        return [Problem(row.line, "messages", f"expected a non-empty list, got {_type_name(messages)}", "wrong_type")]
    problems = []
    for i, message in enumerate(messages):
        problems.extend(_check_message(row.line, f"messages[{i}]", message))
    if not problems and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        problems.append(Problem(row.line, "messages", "no assistant turn to learn from", "no_assistant"))
    return problems


def _check_message(line: int, where: str, message: Any) -> list[Problem]:
    if not isinstance(message, dict):
        return [Problem(line, where, f"expected an object with role and content, got {_type_name(message)}", "wrong_type")]
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
