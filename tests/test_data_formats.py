"""Schemas: classification and preference rows (ours and OpenAI's DPO form), detection, column mapping."""

from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tunelab.data import load_dataset, validate_file
from tunelab.data.formats import Row, detect_format, validate_row
from tunelab.errors import DataError
from tunelab.train.run import load_data

TURN = [{"role": "user", "content": "Pick a colour."}]
DPO = {"input": {"messages": TURN}, "preferred_output": [{"role": "assistant", "content": "Blue."}],
       "non_preferred_output": [{"role": "assistant", "content": "No."}]}


@pytest.mark.parametrize(("fields", "fmt"), [
    ({"text": "a"}, "text"),
    ({"text": "a", "label": 1}, "classification"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
    (DPO, "preference"),
    ({"messages": TURN}, "messages"),
    ({"question": "q"}, None),
])
def test_detect_format(fields, fmt):
    assert detect_format(fields) == fmt


def test_openai_dpo_rows_are_normalised_to_prompt_chosen_rejected(tmp_path):
    path = write_jsonl(tmp_path / "dpo.jsonl", [DPO, {**DPO, "id": 7}])
    data = load_dataset(path)
    assert data.format == "preference"
    assert data.rows[0] == {"prompt": TURN, "chosen": [{"role": "assistant", "content": "Blue."}],
                            "rejected": [{"role": "assistant", "content": "No."}]}
    assert data.rows[1]["id"] == 7


@pytest.mark.parametrize(("fields", "field", "kind"), [
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "same_pair"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing_field"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "chosen", "no_assistant"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt", "wrong_type"),
    ({**DPO, "input": {"msgs": []}}, "input.messages", "wrong_type"),
    ({**DPO, "preferred_output": [{"role": "bot", "content": "x"}]}, "preferred_output[0].role", "bad_role"),
    ({**DPO, "non_preferred_output": DPO["preferred_output"]}, "non_preferred_output", "same_pair"),
])
def test_preference_problems_name_the_field(fields, field, kind):
    problems = validate_row(Row(4, fields), "preference")
    assert [(p.line, p.field, p.kind) for p in problems] == [(4, field, kind)]


def test_column_mapping_and_table_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of Peru?,\n", encoding="utf-8")
    checked = validate_file(csv, columns={"prompt": "question", "completion": "answer"})
    assert checked.format == "prompt_completion" and [r.line for r in checked.rows] == [2]
    assert [(p.line, p.field, p.kind) for p in checked.problems] == [(3, "completion", "empty")]
    table = tmp_path / "cls.parquet"
    pq.write_table(pa.table({"text": ["fine", "awful"], "label": [1, 0]}), table)
    data = load_dataset(table)
    assert data.format == "classification" and data.rows[1] == {"text": "awful", "label": 0}


def test_format_is_detected_by_majority_not_the_first_row(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "stray"}] + [{"prompt": "p", "completion": f"c{i}"}
                                                                        for i in range(3)])
    checked = validate_file(path)
    assert checked.format == "prompt_completion"
    assert [(p.line, p.field) for p in checked.problems] == [(1, "prompt"), (1, "completion")]


def test_run_refuses_rows_its_task_cannot_train_on(tmp_path, tiny_config):
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(6)]
    train = write_jsonl(tmp_path / "cls.jsonl", rows)
    config = tiny_config(f"data.train={train}", "data.eval=null")
    with pytest.raises(DataError, match='no task trains on "classification" rows yet'):
        load_data(config)
