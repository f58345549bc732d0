"""Rows and problems as read from a data file: JSONL, CSV/TSV, Parquet or a saved `datasets` directory.

A record that cannot be parsed is a Problem naming its line, never an exception, so nothing is lost.
In Parquet and `datasets` files a null inside a message is an absent key: Arrow gives every message
each key any message has.
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
                yield Problem(number, "", f"expected a JSON object, got {type_name(value)}", "json", text.rstrip("\n"))
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


def type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
