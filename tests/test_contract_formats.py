"""The format contract, run over every registered row shape: a valid row is clean and detected as
itself, its dedup text holds every text it carries, a missing required field is named, what it
declares it can do (demos, synth, tokens) yields valid rows and consistent token labels."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tunelab.config import load_config
from tunelab.data.formats import FORMATS, Format, detect_format, get_format, inspect_row, register_format, validate_row
from tunelab.data.rows import Row
from tunelab.data.tokens import IGNORE

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima."}]
VALID = {
    "text": {"text": "Once upon a time there was a river."},
    "prompt_completion": {"prompt": "Capital of France?", "completion": " Paris"},
    "messages": {"messages": CHAT},
    "classification": {"text": "a warm and funny film", "label": "positive"},
    "preference": {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "I will not."},
    "tagged_tokens": {"tokens": ["Ada", "lived", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
    "entity_spans": {"text": "Ada lived in Paris", "spans": [{"start": 13, "end": 18, "label": "LOC"}]},
    "pairs": {"anchor": "reset my password", "positive": "How to reset a password"},
    "triplets": {"anchor": "reset my password", "positive": "How to reset a password", "negative": "Office hours"},
    "prompt": {"prompt": "Pick a colour."},
}
ALSO = {  # valid rows in each other form a shape reads (its optional fields), normalised on load
    "preference": {"input": {"messages": [{"role": "user", "content": "Pick a colour."}]},
                   "preferred_output": [{"role": "assistant", "content": "Blue."}],
                   "non_preferred_output": [{"role": "assistant", "content": "No."}]},
    "prompt": {"messages": [{"role": "user", "content": "Pick a colour."}]},  # OpenAI's reinforcement form
}
DEMO = {  # a second row, shown before the first by shapes with demos
    "prompt_completion": {"prompt": "Capital of Chile?", "completion": " Santiago"},
    "messages": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"},
                              {"role": "assistant", "content": "4."}]},
}


def test_every_registered_format_has_a_fixture():
    assert set(VALID) == set(FORMATS)


def texts_in(value: Any) -> list[str]:
    """The text a field carries: a string, a list of strings, or the contents of chat turns."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [m if isinstance(m, str) else m["content"] for m in value if isinstance(m, str) or "content" in m]
    return []


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_valid_row_is_clean_and_detected_as_itself(name):
    row = Row(7, VALID[name])
    assert inspect_row(row, name) == []
    assert detect_format(row.fields) == name
    assert set(get_format(name).required) <= set(row.fields)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_example_row_shown_in_errors_is_valid_and_detected_as_itself(name):
    example = get_format(name).example
    assert inspect_row(Row(1, example), name) == [] and detect_format(example) == name


@pytest.mark.parametrize("name", sorted(set(ALSO) | {n for n in FORMATS if FORMATS[n].optional}))
def test_a_row_in_another_form_is_clean_and_normalises_to_the_required_fields(name):
    shape, fields = get_format(name), ALSO[name]
    assert set(shape.optional) <= set(fields)
    assert inspect_row(Row(2, fields), name) == [] and detect_format(fields) == name
    normal = shape.normalize(fields)
    assert set(normal) == set(shape.required) and inspect_row(Row(2, normal), name) == []


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_dedup_text_holds_every_text_of_the_row(name):
    shape = get_format(name)
    fields = shape.normalize(VALID[name])
    text = shape.text(fields)
    carried = [t for key, value in fields.items() if key != shape.label_field for t in texts_in(value)]
    assert carried and all(t in text for t in carried), (text, carried)


@pytest.mark.parametrize(("name", "missing"), [(n, key) for n in sorted(FORMATS) for key in FORMATS[n].required])
def test_a_missing_required_field_is_named(name, missing):
    fields = {k: v for k, v in VALID[name].items() if k != missing}
    problems = validate_row(Row(3, fields), name)
    assert (3, missing, "missing_field") in [(p.line, p.field, p.kind) for p in problems]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_unknown_top_level_keys_warn_and_known_ones_do_not(name):
    shape = get_format(name)
    found = inspect_row(Row(1, {**VALID[name], "id": 4}), name)
    if shape.keeps_other_fields:  # read with the row (a grader's item), so not ignored: no warning, and kept
        assert found == [] and shape.normalize({**VALID[name], "id": 4})["id"] == 4
        return
    assert [(p.field, p.kind, p.warning) for p in found] == [("id", "ignored_key", True)]
    assert f"expected {', '.join(shape.known)}" in found[0].message


@pytest.mark.parametrize("name", [n for n in sorted(FORMATS) if FORMATS[n].demos])
def test_a_row_with_demos_is_a_valid_row_showing_the_demo_answer_before_its_own(name):
    shape, row = get_format(name), VALID[name]
    demo = DEMO[name]
    shown = shape.text(shape.with_demos(row, [demo]))
    assert validate_row(Row(1, shape.with_demos(row, [demo])), name) == []
    demo_answer, own_answer = shape.text(demo).splitlines()[-1], shape.text(row).splitlines()[-1]
    assert demo_answer in shown and shown.index(demo_answer) < shown.rindex(own_answer)
    assert shape.with_demos(row, []) == row


@pytest.mark.parametrize("name", [n for n in sorted(FORMATS) if FORMATS[n].synth])
def test_synth_composes_a_valid_row_from_a_seed(name):
    shape, seed = get_format(name), VALID[name]
    answer = shape.seed_answer(seed) if shape.answered else None
    label = seed[shape.label_field] if shape.label_field else None
    made = shape.compose(shape.seed_input(seed) + " again", answer, label, [seed])
    assert validate_row(Row(1, made), name) == []
    assert shape.seed_input(made) == shape.seed_input(seed) + " again"


def at(fields: dict, path: str) -> Any:
    """The value a problem's field path names: "messages[2].content" -> fields["messages"][2]["content"]."""
    for key, index in re.findall(r"(\w+)(?:\[(\d+)\])?", path):
        fields = fields[key] if not index else fields[key][int(index)]
    return fields


def having(method: str) -> list[str]:
    """The registered shapes that define `method` (the others keep Format's "has none")."""
    return [n for n in sorted(FORMATS) if getattr(type(FORMATS[n]), method) is not getattr(Format, method)]


@pytest.mark.parametrize("name", having("encode"))
def test_labels_copy_their_tokens_and_length_counts_them(name, tokenizer):
    shape, fields = get_format(name), VALID[name]
    ids, labels = shape.encode(fields, tokenizer)
    assert len(ids) == len(labels) and any(label != IGNORE for label in labels)
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels))
    last = max(i for i, label in enumerate(labels) if label != IGNORE)
    assert labels[last] == tokenizer.eos_token_id  # the answer's end is learned, so the model learns to stop
    assert shape.token_length(fields, tokenizer, last + 1) == (len(ids), "")
    cut = shape.supervised_field(fields)
    assert shape.token_length(fields, tokenizer, last) == (len(ids), cut)
    assert tokenizer.decode(ids[last - 1]).strip() in at(fields, cut)  # the field named holds the cut answer


@pytest.mark.parametrize("name", [n for n in having("generation_prompt") if n in having("encode")])
def test_the_generation_prompt_is_the_training_prefix(name, tokenizer):
    shape, fields = get_format(name), VALID[name]
    ids, labels = shape.encode(fields, tokenizer)
    prompt = shape.generation_prompt(fields, tokenizer)
    n = len(prompt.ids)
    assert ids[:n] == prompt.ids and labels[n - 1] == IGNORE and labels[n] != IGNORE
    assert prompt.reference.strip() in shape.text(fields)


def test_every_format_is_a_config_choice():
    for name in ["auto", *FORMATS]:
        assert load_config(None, ["data.train=x.jsonl", f"data.format={name}"]).data.format == name


def test_detection_priorities_must_differ():
    class Clash(Format):
        name = "clash"
        priority = FORMATS["messages"].priority

    with pytest.raises(ValueError, match=f"priority {Clash.priority} of messages"):
        register_format(Clash())
    assert "clash" not in FORMATS
