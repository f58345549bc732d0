"""The NER task on its own: entity-level scoring on hand-made tags, spans to BIO on words, sub-word
alignment, the dictionary baseline, and bad input naming what it needs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.data.formats import validate_row
from tunelab.data.rows import Row
from tunelab.errors import DataError
from tunelab.scoring.metrics import generation_scores
from tunelab.inputs import choose_task
from tunelab.tasks.ner import IGNORE, Tagged, dictionary_tags, encode_row, encode_rows, predict, words_and_tags

NAMES = ["entity_f1", "entity_precision", "entity_recall"]
REFERENCES = ["B-PER I-PER O B-LOC", "O B-ORG"]  # three entities


def test_entity_scores_count_whole_entities():
    found = generation_scores(NAMES, ["B-PER I-PER O O", "O B-ORG"], REFERENCES)  # two found, both right
    assert found == pytest.approx({"entity_precision": 1.0, "entity_recall": 2 / 3, "entity_f1": 0.8})
    cut = generation_scores(NAMES, ["B-PER O O B-LOC", "O B-ORG"], REFERENCES)  # PER's end wrong: no credit
    assert cut == pytest.approx({"entity_precision": 2 / 3, "entity_recall": 2 / 3, "entity_f1": 2 / 3})
    typed = generation_scores(NAMES, ["B-ORG I-ORG O B-LOC", "O B-ORG"], REFERENCES)  # right span, wrong type
    assert typed["entity_f1"] == pytest.approx(2 / 3)


def test_spans_become_bio_tags_on_words():
    row = {"text": "Ada Lovelace lived in New-York.",
           "spans": [{"start": 0, "end": 12, "label": "PER"}, {"start": 22, "end": 30, "label": "LOC"}]}
    assert words_and_tags(row) == (["Ada", "Lovelace", "lived", "in", "New", "-", "York", "."],
                                   ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"])


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    from tunelab.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-random-bert"))


def test_only_a_words_first_subword_carries_its_tag(bert_tokenizer):
    tokenizer = bert_tokenizer
    words = ["Ada", "Lovelace", "lived"]
    row, word_at = encode_row(words, [3, 4, 0], tokenizer, 64)
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "ada", "love", "##lace", "lived", "[SEP]"]
    assert row["labels"] == [IGNORE, 3, 4, IGNORE, 0, IGNORE] and word_at == [0, 1, 2]
    assert encode_row(words, [3, 4, 0], tokenizer, 4)[0]["labels"] == [IGNORE, 3, 4, IGNORE]  # cut: "lived" is gone


class TagsOneToken(torch.nn.Module):
    """A token classifier that tags one sub-word id as class 1 and every other sub-word as class 0 (O)."""

    def __init__(self, token_id: int, names: list[str]):
        super().__init__()
        self.token_id, self.config = token_id, SimpleNamespace(id2label=dict(enumerate(names)))
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.stack([torch.zeros(input_ids.shape), (input_ids == self.token_id).float()], dim=-1)
        return SimpleNamespace(logits=logits + 0 * self.anchor)


def test_predictions_stay_on_their_words_after_a_word_with_no_subword(bert_tokenizer):
    """A zero-width character is a word the tokenizer drops: the words after it keep their own predictions."""
    words = ["Ann", "\u200b", "lives", "in", "Paris", "now"]
    row, word_at = encode_row(words, [0] * len(words), bert_tokenizer, 64)
    assert word_at == [0, 2, 3, 4, 5]  # word 1 has no sub-word
    held = Tagged([row], [1], [words], [["O"] * len(words)], [word_at])
    paris = bert_tokenizer.convert_tokens_to_ids("paris")
    _, predicted = predict(TagsOneToken(paris, ["O", "B-LOC"]), bert_tokenizer, held, batch_size=4)
    assert predicted == [["O", "O", "O", "O", "B-LOC", "O"]]


def test_dictionary_baseline_tags_each_word_as_most_often_in_training():
    train = Tagged([], [], [["Paris", "is", "big"], ["Paris", "Hilton"], ["in", "Paris"]],
                   [["B-LOC", "O", "O"], ["B-PER", "I-PER"], ["O", "B-LOC"]])
    held = Tagged([], [], [["Paris", "Hilton", "is", "new"]], [["B-PER", "I-PER", "O", "O"]])
    assert dictionary_tags(train, held) == [["B-LOC", "I-PER", "O", "O"]]


@pytest.mark.parametrize(("fields", "field", "says"), [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "tags", "1 tags for 2 tokens"),
    ({"tokens": ["a", "b"], "tags": ["O", "PER"]}, "tags[1]", 'expected O, B-TYPE or I-TYPE, got "PER"'),
    ({"tokens": "a b", "tags": ["O"]}, "tokens", "expected a non-empty list of strings"),
    ({"text": "Ada", "spans": [{"start": 0, "end": 9, "label": "PER"}]}, "spans[0]", "end <= 3"),
    ({"text": "Ada Lovelace", "spans": [{"start": 0, "end": 12, "label": "PER"},
                                        {"start": 4, "end": 12, "label": "PER"}]}, "spans[1]", "overlaps"),
    ({"text": "Ada", "spans": [{"start": 0, "end": 3}]}, "spans[0]", "expected {start, end, label}"),
])
def test_bad_ner_rows_name_their_field(fields, field, says):
    fmt = "tagged_tokens" if "tokens" in fields else "entity_spans"
    problems = validate_row(Row(5, fields), fmt)
    assert [(p.line, p.field) for p in problems] == [(5, field)] and says in problems[0].message


def test_ner_on_prompt_completion_rows_says_which_rows_it_needs(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Capital of Peru?", "completion": " Lima"}] * 4)
    config = load_config(None, [f"data.train={path}", "task=ner", "model=tiny-random-bert"])
    with pytest.raises(DataError) as caught:
        choose_task(config, load_dataset(path, "auto"))
    message = str(caught.value)
    assert 'rows are "prompt_completion" but task "ner" expects tagged_tokens (tokens+tags) or entity_spans ' \
           '(text+spans), e.g. {"tokens": ["Ada", "Lovelace"' in message and "\n" not in message


def test_a_held_out_tag_unseen_in_training_names_its_line(tmp_path, bert_tokenizer):
    path = write_jsonl(tmp_path / "eval.jsonl", [{"tokens": ["Ada"], "tags": ["B-PER"]},
                                                 {"tokens": ["Acme"], "tags": ["B-ORG"]}])
    config = load_config(None, [f"data.train={path}", "task=ner", "model=tiny-random-bert", "ner.labels=[O,B-PER,I-PER]"])
    with pytest.raises(DataError, match=r'eval.jsonl:2: tag "B-ORG" is not one of the labels \(O, B-PER, I-PER\)'):
        encode_rows(load_dataset(path, "auto"), bert_tokenizer, config.ner.labels, 64)
