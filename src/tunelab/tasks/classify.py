"""Text classification: a sequence-classification head on an encoder (MiniLM) or a decoder (SmolLM2).

Labels are read from the training rows (or named in `classify.labels`), kept in that order in the
model's id2label, and reported by name. Beside the tune, the cheap alternative a practitioner tries
first is measured on the same held-out rows: a logistic regression on the frozen base model's
mean-pooled embeddings (the linear probe).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from tunelab.errors import DataError
from tunelab.events import batch_starts
from tunelab.models.loading import ModelSpec
from tunelab.scoring.metrics import generation_rows, generation_scores
from tunelab.scoring.rows import RowValues
from tunelab.settings import Section, register_section
from tunelab.tasks.base import Baseline, Prepared, Scores, Task, register_task, wants

HEADS = ("score", "classifier")  # the new head's module name on Llama-style and BERT-style models


class ClassifySettings(Section):
    labels: list[str] | None = Field(
        None, min_length=2, description="Label names in order; default: the training rows' labels, sorted.")
    linear_probe: bool = Field(True, description="Measure a logistic regression on the frozen base model's "
                                                 "mean-pooled embeddings, the cheap alternative to tuning.")
    probe_rows: int = Field(2000, ge=10, description="Training rows the linear probe fits on at most: a seeded "
                                                     "sample, each label in proportion.")


register_section("classify", ClassifySettings)


@dataclass
class Labelled:
    """Rows as token ids with label ids, and where each came from."""

    rows: list[dict[str, Any]]
    lines: list[int]
    texts: list[str]


def label_names(config: Any, train: Any) -> list[str]:
    """classify.labels, else the training rows' labels sorted (what `resolve` records in the config)."""
    if config.classify.labels:
        return list(config.classify.labels)
    return sorted({str(row["label"]) for row in train.rows})


def unknown_label(dataset: Any, labels: list[str]) -> None:
    """The first row whose label is not one of `labels`, as a DataError naming its file and line."""
    known = set(labels)
    for row, line in zip(dataset.rows, dataset.lines):
        name = str(row["label"])
        if name not in known:
            raise DataError(f'{dataset.path}:{line}: field "label": "{name}" is not one of the labels '
                            f'({", ".join(labels)}); set classify.labels to name every label')


def encode_rows(dataset: Any, tokenizer: Any, labels: list[str], max_length: int) -> Labelled:
    unknown_label(dataset, labels)
    index = {name: i for i, name in enumerate(labels)}
    rows = []
    for row in dataset.rows:
        name = str(row["label"])
        ids = tokenizer(row["text"], add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        rows.append({"input_ids": ids, "labels": index[name]})
    return Labelled(rows, list(dataset.lines), [row["text"] for row in dataset.rows])


class Collate:
    """Right-padded ids, their attention mask, and one label id per row."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [list(r["input_ids"]) + [self.pad_id] * (width - len(r["input_ids"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor([int(r["labels"]) for r in rows])}


@torch.no_grad()
def predict(model: torch.nn.Module, held: Labelled, pad_id: int, batch_size: int) -> tuple[list[float], list[int]]:
    """(cross-entropy of each row, predicted label id per row)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate, losses, predicted = Collate(pad_id), [], []
    try:
        for start in batch_starts("classifying rows", len(held.rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(held.rows[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            losses += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none").tolist()
            predicted += logits.argmax(-1).tolist()
    finally:
        model.train(was_training)
    return losses, predicted


@torch.no_grad()
def embeddings(model: torch.nn.Module, rows: list[dict[str, Any]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Mean-pooled last hidden states of the model's body (its head left out), one row per example."""
    body = model.base_model
    was_training = body.training
    body.eval()
    device = next(model.parameters()).device
    collate, out = Collate(pad_id), []
    try:
        for start in batch_starts("embedding rows", len(rows), batch_size):
            batch = collate(rows[start:start + batch_size])
            mask = batch["attention_mask"].to(device)
            hidden = body(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
            out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    finally:
        body.train(was_training)
    return torch.cat(out).cpu()


def stratified_sample(labels: list[int], k: int, seed: int) -> list[int]:
    """Indices of k rows (all when fewer) drawn with the seed, each label in proportion to its share, every
    label present when k allows: each row's rank within its label over the label's size orders the draw."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    seen, size, rank = Counter(), Counter(labels), {}
    for i in order:
        rank[i] = seen[labels[i]] / size[labels[i]]
        seen[labels[i]] += 1
    return sorted(sorted(order, key=rank.__getitem__)[:k])


class Classify(Task):
    name = "classify"
    description = "Text classification with a new head on an encoder or a decoder (text/label rows)."
    formats = ("classification",)
    sections = ("classify",)
    model_kind = "sequence_classifier"
    baseline_names = ("linear_probe",)
    default_metrics = ("accuracy", "macro_f1")

    def resolve(self, config: Any, train: Any) -> dict[str, Any]:
        return {"classify.labels": label_names(config, train)}

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        for dataset in datasets:
            unknown_label(dataset, list(config.classify.labels or ()))

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        labels = label_names(config, train)
        return ModelSpec(self.model_kind, heads=HEADS, options={
            "num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}})

    def metric_names(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        return ["eval_loss", *self.default_metrics]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        labels, cut = label_names(config, train), config.train.max_length  # held-out rows keep train's labels
        sample = train.sample(config.eval.train_sample, config.train.seed)
        return Prepared(encode_rows(train, tokenizer, labels, cut).rows, encode_rows(held, tokenizer, labels, cut),
                        self.metric_names(config),
                        train_sample=encode_rows(sample, tokenizer, labels, cut) if sample.rows else None,
                        info={"labels": labels})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> Labelled:
        return encode_rows(dataset, tokenizer, label_names(config, dataset), config.train.max_length)

    def collator(self, tokenizer: Any) -> Collate:
        return Collate(tokenizer.pad_token_id)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: Labelled, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        return self.evaluate(model, tokenizer, held_out, config).metrics

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: Labelled, config: Any) -> Scores:
        names = model.config.id2label
        losses, predicted = predict(model, held_out, tokenizer.pad_token_id, config.eval.batch_size)
        answers = [names[i] for i in predicted]
        references = [names[r["labels"]] for r in held_out.rows]
        metrics = {"eval_loss": sum(losses) / max(len(losses), 1),
                   **generation_scores(list(self.default_metrics), answers, references)}
        samples = [{"line": line, "prompt": text, "reference": ref, "output": out}
                   for line, text, ref, out in zip(held_out.lines, held_out.texts, references, answers)]
        rows = {"eval_loss": RowValues.means(held_out.lines, losses),
                **generation_rows(list(self.default_metrics), answers, references, held_out.lines)}
        return Scores(metrics, samples, rows)

    def baselines(self, model: torch.nn.Module, tokenizer: Any, train: Any, held: Any, prepared: Prepared,
                  config: Any, events: Any) -> dict[str, Baseline]:
        if not config.classify.linear_probe or not wants(config, "linear_probe"):
            return {}
        from sklearn.linear_model import LogisticRegression

        events.emit("evaluating", which="linear_probe", what="a logistic regression on frozen embeddings")
        labels = [r["labels"] for r in prepared.train]  # a file sorted by label must not give the probe one class
        fit_on = [prepared.train[i] for i in stratified_sample(labels, config.classify.probe_rows, config.train.seed)]
        pad, batch = tokenizer.pad_token_id, config.eval.batch_size
        probe = LogisticRegression(max_iter=2000)
        probe.fit(embeddings(model, fit_on, pad, batch).numpy(), [r["labels"] for r in fit_on])
        held: Labelled = prepared.held_out
        predicted = probe.predict(embeddings(model, held.rows, pad, batch).numpy()).tolist()
        names = model.config.id2label
        answers = [names[i] for i in predicted]
        references = [names[r["labels"]] for r in held.rows]
        scores = Scores(generation_scores(list(self.default_metrics), answers, references),
                        [{"line": line, "output": out} for line, out in zip(held.lines, answers)],
                        generation_rows(list(self.default_metrics), answers, references, held.lines))
        fitted = Counter(names[r["labels"]] for r in fit_on)
        return {"linear_probe": Baseline("linear probe", scores, {"train_rows": len(fit_on),
                                                                  "train_labels": dict(sorted(fitted.items()))})}


register_task(Classify())
