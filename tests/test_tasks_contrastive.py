"""The contrastive task on its own: retrieval scores on hand-made similarities, the held-out corpus,
evaluation embedding exactly what the SentenceTransformer trains, and full and LoRA training through
sentence-transformers' trainer (with a checkpoint that resumes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.events import Events
from tunelab.methods import get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.tasks import get_task
from tunelab.tasks.contrastive import Retrieval, embed, retrieval_scores, retrieval_set, sentence_transformer
from tunelab.train.trainer import common_args

COLOURS = ["red", "green", "blue", "gold"]
ROWS = [{"anchor": f"what colour is item {i}?", "positive": f"item {i} is {COLOURS[i % 4]}",
         "negative": f"item {i + 1} is {COLOURS[(i + 1) % 4]}"} for i in range(16)]


def hand_made(relevant: list[int], negatives: list, window: int = 32) -> Retrieval:
    return Retrieval([f"q{i}" for i in relevant], [], relevant, list(range(1, len(relevant) + 1)), 32, negatives,
                     window)


def test_retrieval_scores_on_hand_made_similarities():
    similarity = np.array([[0.9, 0.1, 0.2, 0.3],   # own text (0) first: rank 1
                           [0.5, 0.4, 0.6, 0.1],   # own text (1) third: rank 3
                           [0.1, 0.2, 0.3, 0.8]])  # own text (2) second: rank 2
    found = retrieval_scores(similarity, hand_made([0, 1, 2], [3, None, None]), scale=20.0)
    assert found["recall_at_1"] == pytest.approx(1 / 3) and found["recall_at_10"] == 1.0
    assert found["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    expected = torch.nn.functional.cross_entropy(20 * torch.tensor(similarity), torch.tensor([0, 1, 2]))
    assert found["eval_loss"] == pytest.approx(float(expected), rel=1e-6)  # the window holds all 4 texts
    two = retrieval_scores(similarity, hand_made([0, 1, 2], [3, None, None], window=2), scale=20.0)
    rows = [[0, 1, 3], [1, 2], [0, 2, 3]]  # query i meets rows i and i+1 (cyclically): positives and negatives
    by_hand = [torch.nn.functional.cross_entropy(20 * torch.tensor(similarity[i, texts])[None],
                                                 torch.tensor([texts.index(i)])) for i, texts in enumerate(rows)]
    assert two["eval_loss"] == pytest.approx(float(sum(by_hand) / 3), rel=1e-6)


def test_a_tie_counts_against_the_query():
    found = retrieval_scores(np.full((2, 12), 0.5), hand_made([0, 5], [None, None]), scale=20.0)
    assert found["recall_at_1"] == 0.0 and found["recall_at_10"] == 0.0 and found["mrr"] == pytest.approx(1 / 12)


def separating(n: int) -> np.ndarray:
    """Similarities of an encoder equally good on any set: 0.6 to the query's own text, 0.4 to every other."""
    return np.full((n, n), 0.4) + 0.2 * np.eye(n)


def test_held_out_loss_does_not_grow_with_the_number_of_held_out_rows(tmp_path):
    """The fit diagnosis compares the train sample's loss with the held-out one: an encoder as good on both
    must give the same loss on 32 train rows and on 400 held-out rows, and no 'overfitting' finding."""
    from tunelab.eval.diagnosis import Evidence, diagnose

    rows = [{"anchor": f"q{i}", "positive": f"p{i}"} for i in range(400)]
    big = retrieval_set(load_dataset(write_jsonl(tmp_path / "eval.jsonl", rows), "auto"), 32)
    small = retrieval_set(load_dataset(write_jsonl(tmp_path / "sample.jsonl", rows[:32]), "auto"), 32)
    held, train = (retrieval_scores(separating(len(r.queries)), r, scale=20.0)["eval_loss"] for r in (big, small))
    assert held == pytest.approx(train) and train == pytest.approx(np.log(1 + 31 * np.exp(-4)))
    found = diagnose(Evidence([], [], {"eval_loss": 5.0}, {"eval_loss": train}, {"eval_loss": held}))
    assert found["verdict"] != "overfitting", found


def test_prepare_gives_both_sets_the_same_loss_corpus(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    held = write_jsonl(tmp_path / "held.jsonl", ROWS[:5])
    config = load_config(None, ["train.epochs=1", f"data.train={path}", "task=contrastive", "model=tiny-random-bert",
                                "eval.train_sample=12"])
    task = get_task("contrastive")
    prepared = task.prepare(config, None, load_dataset(path, "auto"), load_dataset(held, "auto"), Events())
    assert prepared.held_out.window == prepared.train_sample.window == 5 == prepared.info["loss_window"]


def test_the_corpus_holds_each_positive_and_negative_once(tmp_path):
    rows = [{"anchor": "a", "positive": "p", "negative": "n"}, {"anchor": "b", "positive": "n", "negative": "p"}]
    held = retrieval_set(load_dataset(write_jsonl(tmp_path / "eval.jsonl", rows), "auto"), 32)
    assert held.queries == ["a", "b"] and held.corpus == ["p", "n"] and held.relevant == [0, 1]
    assert held.lines == [1, 2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contrastive")
    path = write_jsonl(tmp / "rows.jsonl", ROWS)

    def make(method: str):
        config = load_config(None, ["train.epochs=1", f"data.train={path}", "task=contrastive", "model=tiny-random-bert",
                                    f"method={method}", "train.max_length=32"])
        data, task = load_dataset(path, "auto"), get_task("contrastive")
        spec = task.model_spec(config, data)
        torch.manual_seed(0)
        tokenizer, model = load_pair(resolve_model(config.model), spec, LoadRules())
        return config, task, spec, tokenizer, model, task.prepare(config, tokenizer, data, data, Events())

    return tmp, make


def test_evaluation_embeds_what_the_sentence_transformer_trains(setup):
    tmp, make = setup
    config, task, spec, tokenizer, model, prepared = make("full")
    texts = [r["positive"] for r in ROWS[:5]] + ["a much longer text, so that the batch is padded"]
    ours = embed(model, tokenizer, texts, 32, batch_size=4)
    theirs = sentence_transformer(model, tokenizer, 32).encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_method_trains_through_the_sentence_transformers_trainer_and_resumes(setup, method):
    tmp, make = setup
    config, task, spec, tokenizer, model, prepared = make(method)
    model = get_method(method).apply(model, config, spec)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = {**common_args(config, tmp / method), "max_steps": 4, "learning_rate": 5e-3, "warmup_steps": 0,
            "save_steps": 4, "per_device_train_batch_size": 8}
    before = task.evaluate(model, tokenizer, prepared.held_out, config).metrics["eval_loss"]
    task.trainer(model, tokenizer, prepared, args, []).train()
    after = task.evaluate(model, tokenizer, prepared.held_out, config)
    assert after.metrics["eval_loss"] < before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert (method == "lora") == bool(frozen)  # LoRA leaves the base frozen; full trains every weight

    _, _, _, _, fresh, _ = make(method)
    fresh = get_method(method).apply(fresh, config, spec)
    trainer = task.trainer(fresh, tokenizer, prepared, args, [])
    trainer._load_from_checkpoint(str(tmp / method / "checkpoint-4"))
    resumed = task.evaluate(fresh, tokenizer, prepared.held_out, config)
    assert resumed.metrics == pytest.approx(after.metrics, rel=1e-5)


def test_training_counts_the_tokens_of_every_column(setup):
    """The summary said 0 tokens/s: transformers counts only a model's main input, which these batches lack."""
    tmp, make = setup
    config, task, spec, tokenizer, model, prepared = make("lora")
    model = get_method("lora").apply(model, config, spec)
    args = {**common_args(config, tmp / "count"), "max_steps": 2, "per_device_train_batch_size": 8,
            "save_strategy": "no"}
    trainer = task.trainer(model, tokenizer, prepared, args, [])
    trainer.train()
    every_text = [row[key] for row in ROWS for key in ("anchor", "positive", "negative")]  # 2 x 8 rows: each once
    expected = sum(len(tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in every_text)
    assert trainer.state.num_input_tokens_seen == expected > 0
