"""Named-entity recognition: a token-classification head on an encoder (MiniLM) or any model with one.

Rows are words with BIO tags, or a text with labelled character spans, which become BIO tags on the
text's words. The model sees the words split into sub-words; only a word's first sub-word carries its
tag (the rest are -100, no loss), which is also where the word's prediction is read. Scoring is
entity-level precision, recall and F1 (seqeval). The cheap alternative measured beside the tune is a
dictionary: each word tagged as it was most often in training.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tunelab.errors import DataError
from tunelab.events import batch_starts
from tunelab.models.loading import ModelSpec
from tunelab.scoring.metrics import generation_rows, generation_scores
from tunelab.scoring.rows import RowValues
from tunelab.settings import Section, register_section
from tunelab.tasks.base import Baseline, Prepared, Scores, Task, register_task, wants

HEADS = ("classifier", "score")  # the new head's module name on BERT-style and Llama-style models
IGNORE = -100                    # transformers' ignore index: no loss, no prediction read
WORD = re.compile(r"\w+|[^\w\s]")  # how a spans row's text splits into words (punctuation apart)


class NerSettings(Section):
    labels: list[str] | None = Field(
        None, min_length=2, description="BIO tags in order (O first); default: O, then B-/I- of every entity type "
                                        "in the training rows, sorted.")
    dictionary_baseline: bool = Field(True, description="Measure a dictionary (each word tagged as most often in "
                                                        "training), the cheap alternative to tuning.")


register_section("ner", NerSettings)


def words_and_tags(fields: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A row's words and their BIO tags; a spans row's words are its text's \\w+ runs and punctuation marks,
    and a word overlapping a span takes its label (B- on the span's first word, I- after)."""
    if "tokens" in fields:
        return list(fields["tokens"]), list(fields["tags"])
    found = list(WORD.finditer(fields["text"]))
    tags = ["O"] * len(found)
    for span in fields["spans"]:
        inside = [i for i, m in enumerate(found) if m.start() < span["end"] and m.end() > span["start"]]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + span["label"]
    return [m.group() for m in found], tags


def tag_names(config: Any, train: Any) -> list[str]:
    """ner.labels, else O and B-/I- of each entity type in the training rows (what `resolve` records)."""
    if config.ner.labels:
        return list(config.ner.labels)
    types = sorted({tag[2:] for row in train.rows for tag in words_and_tags(row)[1] if tag != "O"})
    return ["O", *(f"{prefix}-{t}" for t in types for prefix in "BI")]


@dataclass
class Tagged:
    """Rows as sub-word ids with tag ids on first sub-words, each row's words and gold tags, and which word
    each tagged sub-word starts (a word with no sub-word, such as a zero-width character, has none)."""

    rows: list[dict[str, Any]]
    lines: list[int]
    words: list[list[str]]
    tags: list[list[str]]
    word_at: list[list[int]] = field(default_factory=list)


def encode_row(words: list[str], tags: list[int], tokenizer: Any, max_length: int) -> tuple[dict[str, Any], list[int]]:
    """Sub-word ids with a word's tag on its first sub-word (IGNORE on the rest and on special tokens), and the
    index of the word each tagged sub-word starts."""
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    labels, word_at, previous = [], [], None
    for word in encoded.word_ids():
        first = word is not None and word != previous
        labels.append(tags[word] if first else IGNORE)
        word_at += [word] if first else []
        previous = word
    return {"input_ids": encoded["input_ids"], "labels": labels}, word_at


def unknown_tag(dataset: Any, names: list[str]) -> None:
    """The first row with a tag that is not one of `names`, as a DataError naming its file and line."""
    known = set(names)
    for row, line in zip(dataset.rows, dataset.lines):
        unknown = next((t for t in words_and_tags(row)[1] if t not in known), None)
        if unknown is not None:
            raise DataError(f'{dataset.path}:{line}: tag "{unknown}" is not one of the labels ({", ".join(names)}); '
                            "set ner.labels to name every tag")


def encode_rows(dataset: Any, tokenizer: Any, names: list[str], max_length: int) -> Tagged:
    unknown_tag(dataset, names)
    index = {name: i for i, name in enumerate(names)}
    out = Tagged([], list(dataset.lines), [], [])
    for row in dataset.rows:
        words, tags = words_and_tags(row)
        encoded, word_at = encode_row(words, [index[t] for t in tags], tokenizer, max_length)
        out.rows.append(encoded)
        out.word_at.append(word_at)
        out.words.append(words)
        out.tags.append(tags)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer: Any, held: Tagged,
            batch_size: int) -> tuple[RowValues, list[list[str]]]:
    """(cross-entropy per tagged sub-word, row by row, predicted tags per word). A prediction is read at a
    word's first sub-word and put back on that word; words cut by max_length or with no sub-word are O."""
    from transformers import DataCollatorForTokenClassification

    names = model.config.id2label
    collate = DataCollatorForTokenClassification(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss, predicted = [], []
    try:
        for start in batch_starts("tagging rows", len(held.rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(held.rows[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"]
            each = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                     reduction="none")
            loss += zip(each.sum(1).tolist(), (labels != IGNORE).sum(1).tolist())
            for row_logits, row_labels in zip(logits.argmax(-1), labels):
                predicted.append([names[int(i)] for i in row_logits[row_labels != IGNORE].tolist()])
    finally:
        model.train(was_training)
    full = [["O"] * len(words) for words in held.words]
    for tags, row, word_at in zip(full, predicted, held.word_at):
        for word, tag in zip(word_at, row):
            tags[word] = tag
    return RowValues(list(held.lines), np.asarray(loss, dtype=float).reshape(-1, 2)), full


def scores(names: list[str], held: Tagged, predicted: list[list[str]], loss: RowValues | None = None) -> Scores:
    """Entity metrics of the predicted tags (and the held-out loss when given), each also row by row."""
    answers, references = [" ".join(t) for t in predicted], [" ".join(t) for t in held.tags]
    samples = [{"line": line, "prompt": " ".join(words), "reference": ref, "output": out}
               for line, words, ref, out in zip(held.lines, held.words, references, answers)]
    rows = generation_rows(names, answers, references, held.lines)
    metrics = generation_scores(names, answers, references)
    if loss is not None:
        rows["eval_loss"], metrics = loss, {"eval_loss": loss.value(), **metrics}
    return Scores(metrics, samples, rows)


def dictionary_tags(train: Tagged, held: Tagged) -> list[list[str]]:
    """Each held-out word tagged as it was most often in training; unseen words are O."""
    seen: dict[str, Counter] = defaultdict(Counter)
    for words, tags in zip(train.words, train.tags):
        for word, tag in zip(words, tags):
            seen[word][tag] += 1
    return [[seen[w].most_common(1)[0][0] if w in seen else "O" for w in words] for words in held.words]


class Ner(Task):
    name = "ner"
    description = "Named-entity recognition: BIO tags on words with a token-classification head (tokens/tags or " \
                  "text/spans rows)."
    formats = ("tagged_tokens", "entity_spans")
    sections = ("ner",)
    model_kind = "token_classifier"
    baseline_names = ("dictionary",)
    default_metrics = ("entity_f1", "entity_precision", "entity_recall")

    def resolve(self, config: Any, train: Any) -> dict[str, Any]:
        return {"ner.labels": tag_names(config, train)}

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        for dataset in datasets:
            unknown_tag(dataset, list(config.ner.labels or ()))

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        names = tag_names(config, train)
        return ModelSpec(self.model_kind, heads=HEADS, options={
            "num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}})

    def metric_names(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        return ["eval_loss", *self.default_metrics]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        names, cut = tag_names(config, train), config.train.max_length  # held-out rows keep train's tags
        sample = train.sample(config.eval.train_sample, config.train.seed)
        return Prepared(encode_rows(train, tokenizer, names, cut).rows, encode_rows(held, tokenizer, names, cut),
                        self.metric_names(config),
                        train_sample=encode_rows(sample, tokenizer, names, cut) if sample.rows else None,
                        info={"labels": names})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> Tagged:
        return encode_rows(dataset, tokenizer, tag_names(config, dataset), config.train.max_length)

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: Tagged, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        return self.evaluate(model, tokenizer, held_out, config).metrics

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: Tagged, config: Any) -> Scores:
        loss, predicted = predict(model, tokenizer, held_out, config.eval.batch_size)
        return scores(list(self.default_metrics), held_out, predicted, loss)

    def baselines(self, model: torch.nn.Module, tokenizer: Any, train: Any, held: Any, prepared: Prepared,
                  config: Any, events: Any) -> dict[str, Baseline]:
        if not config.ner.dictionary_baseline or not wants(config, "dictionary"):
            return {}
        tagged = encode_rows(train, tokenizer, tag_names(config, train), config.train.max_length)
        found = scores(list(self.default_metrics), prepared.held_out, dictionary_tags(tagged, prepared.held_out))
        samples = [{"line": s["line"], "output": s["output"]} for s in found.samples]
        return {"dictionary": Baseline("dictionary", Scores(found.metrics, samples, found.rows),
                                       {"train_rows": len(train.rows)})}


register_task(Ner())
