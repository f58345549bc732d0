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
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from tunelab.errors import DataError
from tunelab.events import batch_starts
from tunelab.models.loading import ModelSpec
from tunelab.scoring.metrics import generation_scores
from tunelab.settings import Section, register_section
from tunelab.tasks.base import Baseline, Prepared, Scores, Task, register_task

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
    """Rows as sub-word ids with tag ids on first sub-words, and each row's words and gold tags."""

    rows: list[dict[str, Any]]
    lines: list[int]
    words: list[list[str]]
    tags: list[list[str]]


def encode_row(words: list[str], tags: list[int], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Sub-word ids; a word's tag on its first sub-word, IGNORE on the rest and on special tokens."""
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    labels, previous = [], None
    for word in encoded.word_ids():
        labels.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return {"input_ids": encoded["input_ids"], "labels": labels}


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
        out.rows.append(encode_row(words, [index[t] for t in tags], tokenizer, max_length))
        out.words.append(words)
        out.tags.append(tags)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer: Any, held: Tagged, batch_size: int) -> tuple[float, list[list[str]]]:
    """(cross-entropy per tagged sub-word, predicted tags per word); words cut by max_length are predicted O."""
    from transformers import DataCollatorForTokenClassification

    names = model.config.id2label
    collate = DataCollatorForTokenClassification(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, predicted = 0.0, 0, []
    try:
        for start in batch_starts("tagging rows", len(held.rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(held.rows[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"]
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                             ignore_index=IGNORE, reduction="sum"))
            count += int((labels != IGNORE).sum())
            for row_logits, row_labels in zip(logits.argmax(-1), labels):
                predicted.append([names[int(i)] for i in row_logits[row_labels != IGNORE]])
    finally:
        model.train(was_training)
    full = [tags + ["O"] * (len(words) - len(tags)) for tags, words in zip(predicted, held.words)]
    return total / max(count, 1), full


def scores(names: list[str], held: Tagged, predicted: list[list[str]], metrics: dict[str, float]) -> Scores:
    answers, references = [" ".join(t) for t in predicted], [" ".join(t) for t in held.tags]
    samples = [{"line": line, "prompt": " ".join(words), "reference": ref, "output": out}
               for line, words, ref, out in zip(held.lines, held.words, references, answers)]
    return Scores({**metrics, **generation_scores(names, answers, references)}, samples)


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
        return scores(list(self.default_metrics), held_out, predicted, {"eval_loss": loss})

    def baselines(self, model: torch.nn.Module, tokenizer: Any, train: Any, held: Any, prepared: Prepared,
                  config: Any, events: Any) -> dict[str, Baseline]:
        if not config.ner.dictionary_baseline:
            return {}
        tagged = encode_rows(train, tokenizer, tag_names(config, train), config.train.max_length)
        found = scores(list(self.default_metrics), prepared.held_out, dictionary_tags(tagged, prepared.held_out), {})
        samples = [{"line": s["line"], "output": s["output"]} for s in found.samples]
        return {"dictionary": Baseline("dictionary", Scores(found.metrics, samples), {"train_rows": len(train.rows)})}


register_task(Ner())
