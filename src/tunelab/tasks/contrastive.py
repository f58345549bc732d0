"""Sentence embeddings: contrastive fine-tuning of an encoder on anchor/positive pairs (or triplets with a
hard negative), with in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss).

The run's model is the loaded transformer (kind `embedding`) made trainable by the method; for training it
is wrapped, not copied, into a SentenceTransformer (that transformer + mean pooling), so the method's
weights are what train and what the method saves. Scoring is retrieval on the held-out rows: each anchor
is a query, every held-out positive and negative is the corpus, and the query's own positive is the one
relevant text (recall@1, recall@10, MRR). The held-out loss is the training loss's cross-entropy over a
corpus of a fixed size (the texts of `window` rows), the same on the held-out set and on the train sample
the fit diagnosis compares it with: the loss grows with the number of distractors, so corpora of
different sizes would show a gap from size alone. The untuned encoder's numbers are the before.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tunelab.data.formats import get_format
from tunelab.scoring.rows import RowValues
from tunelab.scoring.similar import embed
from tunelab.settings import Section, register_section
from tunelab.tasks.base import Prepared, Scores, Task, register_task


class ContrastiveSettings(Section):
    scale: float = Field(20.0, gt=0, description="Inverse temperature of the loss: cosine similarities are "
                                                 "multiplied by it before the softmax over candidates.")


register_section("contrastive", ContrastiveSettings)
LOSS_WINDOW = 32  # rows whose texts make each query's corpus for the held-out loss (eval.train_sample's default)


@dataclass
class Retrieval:
    """Held-out queries and a corpus of unique texts; relevant[i] is the corpus index of query i's positive,
    negatives[i] of its negative (None for a pair); the loss reads each query against `window` rows' texts."""

    queries: list[str]
    corpus: list[str]
    relevant: list[int]
    lines: list[int]
    max_length: int
    negatives: list[int | None] = field(default_factory=list)
    window: int = LOSS_WINDOW


def retrieval_set(dataset: Any, max_length: int) -> Retrieval:
    """Anchors become queries; positives and negatives, each text once, the corpus."""
    corpus: dict[str, int] = {}
    for row in dataset.rows:
        for key in ("positive", "negative"):
            if key in row:
                corpus.setdefault(row[key], len(corpus))
    return Retrieval([row["anchor"] for row in dataset.rows], list(corpus),
                     [corpus[row["positive"]] for row in dataset.rows], list(dataset.lines), max_length,
                     [corpus[row["negative"]] if "negative" in row else None for row in dataset.rows],
                     min(LOSS_WINDOW, len(dataset.rows)))


def retrieval_rows(similarity: np.ndarray, held: Retrieval, scale: float) -> dict[str, RowValues]:
    """Per query: whether its relevant text ranks first (recall@1) or in the top 10 among all corpus texts
    (ties count against the query), 1/rank (MRR), and its loss (`window_losses`)."""
    rows = np.arange(len(held.relevant))
    own = similarity[rows, held.relevant]
    rank = (similarity >= own[:, None]).sum(1)  # 1 is best; a tie with another text ranks below it
    return {"eval_loss": RowValues.means(held.lines, window_losses(similarity, held, scale)),
            "recall_at_1": RowValues.means(held.lines, (rank <= 1).astype(float), outcomes=True),
            "recall_at_10": RowValues.means(held.lines, (rank <= 10).astype(float), outcomes=True),
            "mrr": RowValues.means(held.lines, 1.0 / rank)}


def retrieval_scores(similarity: np.ndarray, held: Retrieval, scale: float) -> dict[str, float]:
    """recall@1, recall@10, MRR and eval_loss: the means over queries of `retrieval_rows`."""
    return {name: values.value() for name, values in retrieval_rows(similarity, held, scale).items()}


def window_losses(similarity: np.ndarray, held: Retrieval, scale: float) -> list[float]:
    """Per query, the cross-entropy of the scaled similarities, the relevant text the target, over the texts
    of `held.window` rows: the query's own and the next ones (cyclically). Every query, of any set, then
    meets a corpus of the same size, as a training batch of that many rows does."""
    n, out = len(held.relevant), []
    for i in range(n):
        window = [(i + k) % n for k in range(min(held.window, n))]
        texts = sorted({held.relevant[j] for j in window} | {held.negatives[j] for j in window
                                                             if held.negatives and held.negatives[j] is not None})
        logits = scale * similarity[i, texts]
        top = logits.max()
        out.append(float(top + np.log(np.exp(logits - top).sum()) - scale * similarity[i, held.relevant[i]]))
    return out


def sentence_transformer(model: torch.nn.Module, tokenizer: Any, max_length: int) -> Any:
    """The run's transformer (its method applied) + mean pooling as a SentenceTransformer; no weights are copied."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from tunelab.models.sentence import LoadedEncoder

    return SentenceTransformer(modules=[LoadedEncoder(model, tokenizer, max_length),
                                        Pooling(model.config.hidden_size, "mean")],
                               device=str(next(model.parameters()).device))


class Contrastive(Task):
    name = "contrastive"
    description = "Sentence embeddings: contrastive tuning of an encoder on anchor/positive pairs or triplets " \
                  "(in-batch negatives), scored by held-out retrieval."
    formats = ("pairs", "triplets")
    sections = ("contrastive",)
    model_kind = "embedding"
    default_metrics = ("recall_at_1", "recall_at_10", "mrr")

    def metric_names(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        return ["eval_loss", *self.default_metrics]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        sample = train.sample(config.eval.train_sample, config.train.seed)
        columns = get_format(train.format).required  # the loss reads anchor, positive[, negative] in this order
        held_out = self.held_out(config, tokenizer, held, events)
        train_sample = self.held_out(config, tokenizer, sample, events) if sample.rows else None
        if train_sample is not None:  # the fit diagnosis compares the two losses: equal corpora
            held_out.window = train_sample.window = min(held_out.window, train_sample.window)
        return Prepared([{key: row[key] for key in columns} for row in train.rows], held_out,
                        self.metric_names(config), train_sample=train_sample,
                        info={"loss_scale": config.contrastive.scale, "loss_window": held_out.window})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> Retrieval:
        return retrieval_set(dataset, config.train.max_length)

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: Prepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from transformers import Trainer as TransformersTrainer

        class Trainer(SentenceTransformerTrainer):
            def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
                """A checkpoint holds what the method saved (LoadedEncoder.save), not a loadable
                SentenceTransformer: load it into the wrapped transformer as transformers' Trainer does."""
                TransformersTrainer._load_from_checkpoint(self, resume_from_checkpoint, model=self.model[0].model)

            def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
                """Count the batch's non-padding tokens (every column's), which transformers cannot: it counts
                the model's main input, and these batches hold anchor_input_ids, positive_input_ids, ..."""
                self.state.num_input_tokens_seen += int(sum(
                    int(value.sum()) for key, value in inputs.items() if key.endswith("_attention_mask")))
                return super().training_step(model, inputs, num_items_in_batch)

        wrapped = sentence_transformer(model, tokenizer, prepared.held_out.max_length)
        loss = MultipleNegativesRankingLoss(wrapped, scale=prepared.info["loss_scale"])
        args = {**args, "include_num_input_tokens_seen": False}  # counted in training_step above
        # Built, sentence-transformers' model-card callback draws a "Computing widget examples" bar on stderr; a
        # run reports its progress as events, so that bar is sent nowhere (errors still raise).
        with contextlib.redirect_stderr(io.StringIO()):
            return Trainer(model=wrapped, args=SentenceTransformerTrainingArguments(**args),
                           train_dataset=Dataset.from_list(prepared.train), loss=loss, callbacks=callbacks)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: Retrieval, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        return self.evaluate(model, tokenizer, held_out, config).metrics

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: Retrieval, config: Any) -> Scores:
        batch = config.eval.batch_size
        queries = embed(model, tokenizer, held_out.queries, held_out.max_length, batch)
        corpus = embed(model, tokenizer, held_out.corpus, held_out.max_length, batch)
        similarity = queries.numpy() @ corpus.numpy().T  # in fp32, outside the scoring autocast
        found = similarity.argmax(1)
        samples = [{"line": line, "prompt": query, "reference": held_out.corpus[want], "output": held_out.corpus[got]}
                   for line, query, want, got in zip(held_out.lines, held_out.queries, held_out.relevant, found)]
        rows = retrieval_rows(similarity, held_out, config.contrastive.scale)
        return Scores({name: values.value() for name, values in rows.items()}, samples, rows)


register_task(Contrastive())
