"""Reading the three row formats from JSONL, CSV and Parquet, with column mapping and seeded splits."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunelab.data import fingerprint, load_dataset, split_rows
from tunelab.errors import DataError


def test_formats_are_detected(tmp_path, chat_rows):
    cases = {"text": [{"text": "hello"}], "prompt_completion": [{"prompt": "a", "completion": "b"}],
             "messages": chat_rows[:1]}
    for fmt, rows in cases.items():
        assert load_dataset(write_jsonl(tmp_path / f"{fmt}.jsonl", rows)).format == fmt


def test_csv_and_parquet_and_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('question,answer\n"What, exactly?",yes\nWhy,because\n', encoding="utf-8")
    data = load_dataset(csv_path, columns={"prompt": "question", "completion": "answer"})
    assert data.format == "prompt_completion" and data.rows[0]["prompt"] == "What, exactly?"
    assert data.lines == [2, 3]
    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "d.parquet")
    assert load_dataset(tmp_path / "d.parquet").rows == [{"text": "one"}, {"text": "two"}]


def test_every_problem_is_reported_with_line_and_field(tmp_path, chat_rows):
    lines = [json.dumps(chat_rows[0]), "{not json", json.dumps({"messages": []}),
             json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "assistant", "content": 5}]})]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    text = str(info.value)
    assert f"{path}:2: not valid JSON" in text
    assert f'{path}:3: field "messages": expected a non-empty list' in text
    assert f'{path}:4: field "messages": no assistant turn' in text
    assert f'{path}:5: field "messages[0].content": expected a string, got a number' in text
    assert "4 problem(s) in 5 row(s)" in text


def test_non_utf8_line_is_reported(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        load_dataset(path)


def test_unknown_fields_say_how_to_map_them(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"cannot tell the format from fields \[answer, question\]: no prompt column "
                                        r"and no completion column; map them with data.columns.prompt=question "
                                        r"data.columns.completion=answer"):
        load_dataset(path)


def test_split_is_seeded_and_disjoint(tmp_path):
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(50)]))
    train, held = split_rows(data, 0.2, seed=7)
    again, _ = split_rows(data, 0.2, seed=7)
    assert len(held.rows) == 10 and len(train.rows) == 40
    assert train.rows == again.rows
    assert not {r["text"] for r in train.rows} & {r["text"] for r in held.rows}


def test_fingerprint_changes_with_content(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    before = fingerprint(a)
    write_jsonl(a, [{"text": "y"}])
    assert fingerprint(a) != before and len(before) == 64
