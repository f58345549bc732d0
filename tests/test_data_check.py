"""`tunelab data check` on a file with planted defects: each is named by line, field and kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.cli import main
from tunelab.data.check import check_file

LONG_ANSWER = ("Sunlight scatters off the molecules of air, and the short blue wavelengths scatter far more "
               "than the long red ones, so blue light reaches your eyes from every part of the sky at noon.")
LONG_QUESTION = "Explain why the sky looks blue on a clear afternoon in the middle of summer."


def chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **extra}]}


# Rows 2, 3 and 4 carry keys training ignores: warnings, and the rows are kept.
GOOD = [
    chat("What is the capital of France?", "Paris is the capital of France."),
    {**chat(LONG_QUESTION, LONG_ANSWER), "id": "q-2"},
    {**chat("Name a prime number above ten.", "Thirteen is prime."), "id": "q-3"},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello there!", "name": "ann"},
                  {"role": "assistant", "content": "Hi.", "weight": 0}, {"role": "user", "content": "Bye?"},
                  {"role": "assistant", "content": "Goodbye, friend.", "weight": 1}]},
    chat("Translate 'chat' from French.", "It means cat."),
    chat("How many legs does a spider have?", "Eight legs."),
]

# (line content, kind, field): one planted defect per line, after the good rows.
DEFECTS = [
    ('{"messages": [', "json", ""),
    (b'{"messages": "caf\xe9"}', "encoding", ""),
    ("[1, 2]", "json", ""),
    (json.dumps({"conversation": []}), "missing_field", "messages"),
    (json.dumps({"messages": "hello"}), "wrong_type", "messages"),
    (json.dumps({"messages": ["hello"]}), "wrong_type", "messages[0]"),
    (json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
     "wrong_type", "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}),
     "bad_role", "messages[1].role"),
    (json.dumps({"messages": [{"content": "who am I?"}, {"role": "assistant", "content": "no one"}]}),
     "bad_role", "messages[0].role"),
    (json.dumps(chat("Say nothing at all.", "   ")), "empty", "messages[1].content"),
    (json.dumps({"messages": [{"role": "user", "content": "Anyone there?"}]}), "no_assistant", "messages"),
    (json.dumps(chat("Weigh this.", "Heavy.", weight=2)), "bad_weight", "messages[1].weight"),
    (json.dumps({"messages": [{"role": "user", "content": "q", "colour": "red"},
                              {"role": "assistant", "content": "a"}]}), "unknown_key", "messages[0].colour"),
    (json.dumps(chat("Weather in Oslo?", "Checking.", tool_calls=[{"id": "1", "type": "function"}])),
     "unsupported", "messages[1].tool_calls"),
    (json.dumps(chat("Write a long list of fruit.", " ".join(["apple banana cherry"] * 40))),
     "too_long", "messages[1].content"),
    (json.dumps(GOOD[0]), "duplicate", ""),
    (json.dumps(chat(LONG_QUESTION, LONG_ANSWER.replace("molecules", "molecuels").replace("noon", "midday"))),
     "near_duplicate", ""),
]


def write_fixture(path: Path) -> Path:
    lines = [json.dumps(r).encode() for r in GOOD]
    lines += [d if isinstance(d, bytes) else d.encode() for d, _, _ in DEFECTS]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def defects(tmp_path) -> Path:
    return write_fixture(tmp_path / "defects.jsonl")


def defect_lines() -> dict[int, tuple[str, str]]:
    return {n: (kind, field) for n, (_, kind, field) in enumerate(DEFECTS, start=len(GOOD) + 1)}


def test_every_defect_is_reported_with_line_field_and_kind(defects, tokenizer):
    report = check_file(defects, tokenizer, max_length=96)
    assert len({kind for _, kind, _ in DEFECTS}) == 13 and len(DEFECTS) == 17
    assert {(p.line, p.field, p.kind) for p in report.problems} == {(n, f, k) for n, (k, f) in defect_lines().items()}
    assert [(p.line, p.field, p.kind) for p in report.warnings] == [
        (2, "id", "ignored_key"), (4, "messages[1].name", "ignored_key"), (10, "conversation", "ignored_key")]
    assert report.ignored_keys == {"id": 2, "messages[].name": 1, "conversation": 1}
    assert report.kept == len(GOOD)
    assert sorted(report.rejected) == list(range(len(GOOD) + 1, len(GOOD) + len(DEFECTS) + 1))
    assert report.kept + len(report.rejected) == report.total == len(GOOD) + len(DEFECTS)


def test_duplicates_name_the_row_they_repeat(defects, tokenizer):
    report = check_file(defects, tokenizer, max_length=96)
    by_kind = {p.kind: p for p in report.problems}
    assert by_kind["duplicate"].message == "exact duplicate of line 1"
    assert by_kind["near_duplicate"].message.startswith("near-duplicate of line 2 (Jaccard 0.")
    assert report.summary()["exact_duplicates"] == 1 and report.summary()["near_duplicates"] == 1


def test_cli_prints_problems_writes_rejects_and_exits_1(defects, capsys, tmp_path):
    rejects = tmp_path / "out" / "rejects.jsonl"
    code = main(["data", "check", str(defects), "--model", "tiny-random-llama", "--max-length", "96",
                 "--rejects", str(rejects)])
    out = capsys.readouterr().out
    assert code == 1
    assert f'{defects}:14: field "messages[1].role": expected one of system|user|assistant, got "bot"' in out
    assert f'{defects}:19: field "messages[0].colour": unknown key (expected role, content, weight, name)\n' in out
    assert f'{defects}:2: warning: field "id": unknown key (expected messages); ignored (2 rows carry it; ' in out
    assert ("ignored keys (warnings; no row is rejected for one): id on 2 row(s), messages[].name on 1 row(s), "
            "conversation on 1 row(s)") in out
    printed = [int(m) for m in re.findall(rf"^{re.escape(str(defects))}:(\d+): (?!warning)", out, re.MULTILINE)]
    assert sorted(set(printed)) == sorted(defect_lines())
    assert f"{len(GOOD) + len(DEFECTS)} rows (messages): {len(GOOD)} kept, {len(DEFECTS)} rejected" in out
    records = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [r["line"] for r in records] == list(range(len(GOOD) + 1, len(GOOD) + len(DEFECTS) + 1))
    assert records[0]["raw"] == '{"messages": [' and "not valid JSON" in records[0]["reasons"][0]
    assert records[1]["raw"] == '{"messages": "caf\\xe9"}'
    assert records[15]["row"] == GOOD[0] and records[15]["reasons"] == ["exact duplicate of line 1"]


def test_cli_json_lists_each_rejected_line_with_its_kind_and_rejects_file_holds_each(defects, capsys, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    code = main(["data", "check", str(defects), "--model", "tiny-random-llama", "--max-length", "96",
                 "--rejects", str(rejects), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert {p["line"]: (p["kind"], p["field"]) for p in summary["problems"]} == defect_lines()
    assert len(summary["problems"]) == len(DEFECTS)  # one problem per defective line, none elsewhere
    assert [(w["line"], w["field"]) for w in summary["warnings"]] == [(2, "id"), (4, "messages[1].name"),
                                                                      (10, "conversation")]
    input_rows = len(defects.read_bytes().splitlines())
    assert summary["kept"] + summary["rejected"] == summary["rows"] == input_rows == len(GOOD) + len(DEFECTS)
    assert summary["kept"] == len(GOOD)
    records = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [r["line"] for r in records] == sorted(defect_lines())
    assert all(len(r["reasons"]) == 1 and ("row" in r or "raw" in r) for r in records)


def test_clean_file_exits_0_and_reports_token_stats(tmp_path, capsys):
    path = write_jsonl(tmp_path / "ok.jsonl", GOOD)
    assert main(["data", "check", str(path), "--model", "tiny-random-llama", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == summary["kept"] == len(GOOD) and summary["rejected"] == 0
    assert summary["tokens"]["min"] <= summary["tokens"]["median"] <= summary["tokens"]["p95"] <= summary["tokens"]["max"]
    assert not (tmp_path / "ok.jsonl.rejects.jsonl").exists()


CLASSIFICATION = [
    ({"text": "great movie, loved it", "label": "pos"}, None, ""),
    ({"text": "dull and far too long", "label": "neg"}, None, ""),
    ({"text": "the soundtrack was superb", "label": "pos"}, None, ""),
    ({"text": "wrong label type", "label": ["pos"]}, "wrong_label", "label"),
    ({"text": "a float label", "label": 0.5}, "wrong_label", "label"),
    ({"text": "a boolean label", "label": True}, "wrong_label", "label"),
    ({"text": "no label at all", "tag": "pos"}, "missing_field", "label"),
    ({"text": " \t ", "label": "neg"}, "empty", "text"),
]


def test_classification_rows_and_label_balance(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "cls.jsonl", [r for r, _, _ in CLASSIFICATION])
    report = check_file(path, tokenizer)
    assert report.format == "classification"
    found = {(p.line, p.field, p.kind) for p in report.problems}
    expected = {(n, f, k) for n, (_, k, f) in enumerate(CLASSIFICATION, start=1) if k}
    assert found == expected
    assert report.labels == {"pos": 2, "neg": 1}
    assert report.kept == 3 and len(report.rejected) == 5
