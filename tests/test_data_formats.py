"""Schemas: classification and preference rows (ours and OpenAI's DPO form), detection, column mapping."""

from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tunelab.data import load_dataset, validate_file
from tunelab.data.formats import Row, detect_format, inspect_row, validate_row
from tunelab.errors import DataError
from tunelab.inputs import load_data, resolve

TURN = [{"role": "user", "content": "Pick a colour."}]
DPO = {"input": {"messages": TURN}, "preferred_output": [{"role": "assistant", "content": "Blue."}],
       "non_preferred_output": [{"role": "assistant", "content": "No."}]}


@pytest.mark.parametrize(("fields", "fmt"), [
    ({"text": "a"}, "text"),
    ({"text": "a", "label": 1}, "classification"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
    (DPO, "preference"),
    ({"messages": TURN + [{"role": "assistant", "content": "Blue."}]}, "messages"),
    ({"messages": TURN}, "prompt"),  # OpenAI's reinforcement rows: the last turn is the user's, to be answered
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


def test_openai_reinforcement_rows_are_prompts_that_keep_their_other_fields(tmp_path):
    rows = [{"messages": TURN, "reference_answer": "Blue", "meta": {"level": i}} for i in range(3)]
    data = load_dataset(write_jsonl(tmp_path / "rft.jsonl", rows))
    assert data.format == "prompt"
    assert data.rows[2] == {"prompt": TURN, "reference_answer": "Blue", "meta": {"level": 2}}
    assert validate_file(tmp_path / "rft.jsonl").warnings == []  # the other fields are the grader's item


def test_a_reinforcement_row_must_end_with_the_users_turn(tmp_path):
    answered = {"messages": TURN + [{"role": "assistant", "content": "Blue."}], "reference_answer": "Blue"}
    checked = validate_file(write_jsonl(tmp_path / "rft.jsonl", [{"messages": TURN}] * 3 + [answered]))
    assert checked.format == "prompt"
    assert [(p.line, p.field, p.kind) for p in checked.problems] == [(4, "messages[1].role", "wrong_role")]
    assert "the last turn must be the user's" in checked.problems[0].message


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


def test_run_refuses_rows_no_task_trains_on(tmp_path, tiny_config, monkeypatch):
    from tunelab.tasks import TASKS

    for name in [n for n, task in TASKS.items() if "preference" in task.formats]:
        monkeypatch.delitem(TASKS, name)  # every shipped format has a task now: take away preference's
    rows = [{"prompt": f"q {i}", "chosen": "yes", "rejected": "no"} for i in range(6)]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = tiny_config(f"data.train={train}", "data.eval=null")
    with pytest.raises(DataError, match='no task trains on "preference" rows yet'):
        load_data(config)


def test_task_auto_follows_the_rows(tmp_path, tiny_config):
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(6)]
    config = tiny_config(f"data.train={write_jsonl(tmp_path / 'cls.jsonl', rows)}", "data.eval=null")
    complete = resolve(config, load_data(config))
    assert complete.task == "classify" and complete.classify.labels == ["0", "1"]
    assert config.task == "auto" and config.classify is None  # the caller's config is read, never written


def test_a_task_section_set_for_another_task_is_refused_once_auto_chooses(tmp_path, tiny_config):
    rows = [{"text": f"doc {i}"} for i in range(6)]
    config = tiny_config(f"data.train={write_jsonl(tmp_path / 'text.jsonl', rows)}", "data.eval=null",
                         "classify.labels=[a, b]")
    with pytest.raises(DataError, match='(?s)task=auto chose "causal_lm".*task classify'):
        resolve(config, load_data(config))


def test_keys_training_ignores_are_warnings_and_mapped_columns_are_not_among_them(tmp_path):
    csv = tmp_path / "qa.csv"
    csv.write_text("id,question,answer,source\n1,What is 2+2?,4,quiz\n2,Capital of Peru?,Lima,\n", encoding="utf-8")
    checked = validate_file(csv, columns={"prompt": "question", "completion": "answer"})
    assert [r.line for r in checked.rows] == [2, 3] and checked.problems == []
    assert [(p.line, p.field, p.kind) for p in checked.warnings] == [
        (2, "id", "ignored_key"), (2, "source", "ignored_key"), (3, "id", "ignored_key"), (3, "source", "ignored_key")]
    assert checked.warnings[0].render(csv) == (f'{csv}:2: warning: field "id": '
                                               "unknown key (expected prompt, completion); ignored")
    assert len(load_dataset(csv, columns={"prompt": "question", "completion": "answer"}).rows) == 2


@pytest.mark.parametrize(("message", "field", "kind"), [
    ({"role": "user", "content": "hi", "colour": "red"}, "messages[0].colour", "unknown_key"),
    ({"role": "user", "content": "hi", "wieght": 0}, "messages[0].wieght", "unknown_key"),
    ({"role": "user", "content": "hi", "tool_call_id": "7"}, "messages[0].tool_call_id", "unsupported"),
    ({"role": "user", "content": "hi", "function_call": {"name": "f"}}, "messages[0].function_call", "unsupported"),
])
def test_a_message_key_training_cannot_honour_rejects_the_row(message, field, kind):
    row = Row(3, {"messages": [message, {"role": "assistant", "content": "hello"}]})
    assert [(p.line, p.field, p.kind) for p in validate_row(row, "messages")] == [(3, field, kind)]


def test_message_name_and_top_level_extras_warn_without_rejecting():
    fields = {"messages": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "yo"}],
              "tools": [], "id": 9}
    assert validate_row(Row(1, fields), "messages") == []
    assert [(p.field, p.warning) for p in inspect_row(Row(1, fields), "messages")] == [
        ("messages[0].name", True), ("tools", True), ("id", True)]


def test_preference_turns_are_held_to_the_message_keys_too():
    problems = validate_row(Row(2, {**DPO, "preferred_output": [{"role": "assistant", "content": "Blue.", "mood": 1}]}),
                            "preference")
    assert [(p.field, p.kind) for p in problems] == [("preferred_output[0].mood", "unknown_key")]


def chat_with_weights_on_assistant_turns() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say {i}."},
                          {"role": "assistant", "content": f"{i}.", "weight": 1},
                          {"role": "user", "content": "Again."}, {"role": "assistant", "content": f"{i}!"}]}
            for i in range(3)]


def test_chat_tables_with_a_key_on_some_messages_load(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = chat_with_weights_on_assistant_turns()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")  # gives every message "weight": null
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "chat_ds"))
    for path in (tmp_path / "chat.parquet", tmp_path / "chat_ds"):
        assert load_dataset(path).rows == rows


@pytest.mark.parametrize("column", ["answer", "response", "output", "target"])
def test_a_prompt_with_an_answer_under_another_name_is_not_read_as_a_prompt_alone(tmp_path, capsys, column):
    """A `prompt,answer` CSV was checked as prompt-only rows, prepared into prompts alone, and run as rlhf."""
    from tunelab.cli import main
    from tunelab.rundir import RunDir

    csv = tmp_path / "qa.csv"
    csv.write_text(f"prompt,{column}\nWhat is 2+2?,4\nCapital of Peru?,Lima\n", encoding="utf-8")
    hint = (f"qa.csv:2: fields [{', '.join(sorted(['prompt', column]))}]: no completion column; map it with "
            f"data.columns.completion={column} (tunelab data: --column completion={column}), or set data.format=prompt")
    for argv in (["data", "check", str(csv)], ["data", "prepare", str(csv), "-o", str(tmp_path / "out")],
                 ["run", f"data.train={csv}", "model=tiny-random-llama", f"output_dir={tmp_path / 'run'}"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and hint in err, (argv, err)
    assert not (tmp_path / "out").exists()  # prepare leaves nothing; the run leaves only its failed record
    assert RunDir(tmp_path / "run").read_status()["state"] == "failed" and not (tmp_path / "run" / "model").exists()
    mapped = load_dataset(csv, columns={"completion": column})
    assert mapped.format == "prompt_completion" and mapped.rows[1] == {"prompt": "Capital of Peru?", "completion": "Lima"}
    assert load_dataset(csv, "prompt").format == "prompt"  # asked for by name: the prompts alone
