"""Fuzzing the boundaries users feed: data files and configs give a result or a TunelabError, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunelab.config import RunConfig, load_config, validate_config
from tunelab.data import load_dataset
from tunelab.data.rows import Problem, Row, read_rows
from tunelab.errors import TunelabError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

VALID_JSONL = (
    b'{"prompt": "a", "completion": "b"}\n'
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 1}]}\n'
    b'{"text": "plain"}\n'
)
VALID_CSV = b"prompt,completion\nwhat,that\n\"multi\nline\",x\n"
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) |
                          st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)

message = st.dictionaries(st.sampled_from(["role", "content", "weight"]),
                          st.one_of(st.sampled_from(["system", "user", "assistant", 0, 1]), json_value), max_size=3)
schema_row = st.dictionaries(st.sampled_from(["text", "prompt", "completion", "messages", "x"]),
                             st.one_of(json_value, st.lists(message, max_size=4)), max_size=4)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (position, kind, byte) edits: 0 replaces a byte, 1 inserts one, 2 deletes one."""
    buf = bytearray(data)
    for pos, kind, byte in edits:
        at = pos % (len(buf) + 1)
        if kind == 0 and at < len(buf):
            buf[at] = byte
        elif kind == 1:
            buf.insert(at, byte)
        elif at < len(buf):
            del buf[at]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.integers(0, 255)), min_size=1, max_size=8)


def read_or_refuse(path: Path, fmt: str = "auto") -> None:
    try:
        for item in read_rows(path):
            assert isinstance(item, (Row, Problem))
        dataset = load_dataset(path, fmt)
    except TunelabError:
        return
    assert len(dataset.rows) == len(dataset.lines) > 0


@pytest.mark.parametrize("suffix,seed", [(".jsonl", VALID_JSONL), (".csv", VALID_CSV), (".tsv", VALID_CSV)])
@FUZZ
@given(data=st.data())
def test_mutated_data_files_load_or_raise_tunelab_error(tmp_path_factory, suffix, seed, data):
    raw = mutate(seed, data.draw(edits)) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    path = tmp_path_factory.mktemp("fuzz") / f"rows{suffix}"
    path.write_bytes(raw)
    read_or_refuse(path, data.draw(st.sampled_from(["auto", "text", "prompt_completion", "messages"])))


@FUZZ
@given(rows=st.lists(st.one_of(schema_row, json_value), min_size=0, max_size=5))
@example(rows=[{"messages": [{"role": "assistant", "content": "x", "weight": 0.0}]}])
@example(rows=[{"messages": [{"role": "assistant", "content": "x", "weight": None}]}])
@example(rows=[{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c", "messages": 3}])
def test_random_json_rows_load_or_raise_tunelab_error(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for fmt in ("auto", "messages"):
        read_or_refuse(path, fmt)


@FUZZ
@given(table=st.dictionaries(st.sampled_from(["text", "prompt", "completion", "messages", "x"]),
                             st.lists(st.one_of(st.none(), st.text(max_size=8), st.integers(-9, 9)), min_size=3, max_size=3),
                             min_size=1, max_size=3))
def test_random_parquet_tables_load_or_raise_tunelab_error(tmp_path_factory, table):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("fuzz") / "rows.parquet"
    try:
        pq.write_table(pa.table(table), path)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return  # a mixed-type column is not a table pyarrow can write; nothing to read
    read_or_refuse(path)


def valid_config_dict() -> dict:
    return {"name": "fz", "model": "tiny-random-llama", "data": {"train": "t.jsonl", "format": "messages"},
            "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}, "lora": {"r": 4}}


def leaf_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaf_paths(value, (*prefix, key))
    else:
        yield prefix


@FUZZ
@given(raw=st.dictionaries(st.text(max_size=12), json_value, max_size=6))
def test_random_config_mappings_validate_or_raise_config_error(raw):
    try:
        assert isinstance(validate_config(raw), RunConfig)
    except TunelabError:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_configs_validate_or_raise_config_error(data):
    raw = valid_config_dict()
    paths = list(leaf_paths(raw))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(json_value)
    try:
        assert isinstance(validate_config(raw), RunConfig)
    except TunelabError:
        pass


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.builds(lambda c: yaml.safe_dump(c), st.just(valid_config_dict()))
                      .flatmap(lambda s: st.builds(lambda e: mutate(s.encode(), e).decode("utf-8", "replace"), edits))),
       overrides=st.lists(st.text(max_size=30), max_size=3))
def test_yaml_files_and_overrides_load_or_raise_config_error(tmp_path_factory, text, overrides):
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_config(path, overrides), RunConfig)
    except TunelabError:
        pass


# Inputs the fuzzers above found that used to escape as RecursionError, ValueError or csv.Error.
@pytest.mark.parametrize("name,raw,message", [
    ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "deep.jsonl:1: not readable JSON: maximum recursion"),
    ("bigint.jsonl", b'{"text": ' + b"9" * 5000 + b"}\n", "bigint.jsonl:1: not readable JSON: Exceeds the limit"),
    ("big.csv", b"text\n" + b"a" * 200_000 + b"\n", "big.csv:2: not valid CSV: field larger than field limit"),
])
def test_inputs_found_by_fuzzing_raise_data_error(tmp_path, name, raw, message):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(TunelabError) as err:
        load_dataset(path)
    assert message in str(err.value)


def test_a_bom_on_the_first_jsonl_line_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')
    assert load_dataset(path).rows == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize("text,overrides,message", [
    ("a: " + "[" * 10_000 + "]" * 10_000, [], "nested too deeply"),
    ("data: {train: x}", ["train.epochs=inf"], 'train.epochs: expected a positive number of passes or "auto", got "inf"'),
    ("data: {train: x}", ["train.learning_rate=.nan"], "train.learning_rate: Input should be a finite number"),
    ("data: {train: x}", ["output_dir=a\0b"], "output_dir: contains a NUL byte"),
])
def test_configs_found_by_fuzzing_raise_config_error(tmp_path, text, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TunelabError) as err:
        load_config(path, overrides)
    assert message in str(err.value)
