"""Packing for continued pretraining: packed batches give the loss of the same documents unpacked,
because no document attends to another (position ids restart per document, no cache)."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.tokens import IGNORE, encode_text
from tunelab.errors import ConfigError
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, ModelSpec, load_pair
from tunelab.tasks.causal_lm import check_packing
from tunelab.tasks.lm import Collator, FlatCollator

TEXTS = ["The red fox jumps over the lazy dog near the river bank.", "Preheat the oven to 180 degrees.",
         "Short one.", "Turn the dial clockwise until the green light shows, then press start twice."]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tokenizer, model = load_pair(resolve_model("tiny-random-llama"), ModelSpec(), LoadRules())
    return tokenizer, model.eval()


def rows(tokenizer):
    out = []
    for text in TEXTS:
        ids, labels = encode_text(text, tokenizer)
        out.append({"input_ids": ids, "labels": labels})
    return out


def packed_batch(tokenizer):
    """What LmTrainer forwards for a packed micro-batch: FlatCollator's batch without its attention mask (kept
    only for the Trainer's token count) and without a cache."""
    batch = FlatCollator()(rows(tokenizer))
    return {**{k: v for k, v in batch.items() if k != "attention_mask"}, "use_cache": False}


@torch.no_grad()
def losses(model, tokenizer, **packed_extra):
    unpacked = model(**Collator(tokenizer.pad_token_id)(rows(tokenizer))).loss.item()
    packed = model(**{**packed_batch(tokenizer), **packed_extra}).loss.item()
    return unpacked, packed


def test_packed_loss_equals_unpacked(pair):
    unpacked, packed = losses(*reversed(pair))
    assert packed == pytest.approx(unpacked, abs=1e-4)  # measured: equal to 1e-6


def test_documents_that_see_each_other_change_the_loss(pair):
    # A cache switches off transformers' boundary detection: the documents then attend to each other,
    # and the comparison above would fail (measured difference 0.0036 on the tiny model, 30x its tolerance).
    unpacked, leaked = losses(*reversed(pair), use_cache=True)
    assert abs(leaked - unpacked) > 1e-3


def test_packed_batch_is_one_row_without_padding(pair):
    tokenizer, _ = pair
    batch = packed_batch(tokenizer)
    lengths = [len(r["input_ids"]) for r in rows(tokenizer)]
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert batch["position_ids"][0, starts].tolist() == [0] * len(lengths)
    assert batch["labels"][0, starts].tolist() == [IGNORE] * len(lengths)
    # the same supervised predictions as unpacked: every token but each document's first
    assert int((batch["labels"] != IGNORE).sum()) == sum(lengths) - len(lengths)


class Leaky(torch.nn.Module):
    """A model that drops position ids: packed documents attend to each other."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, use_cache=False)


def test_packing_is_refused_for_a_model_that_leaks_across_documents(pair):
    tokenizer, model = pair
    check_packing(model, rows(tokenizer))
    with pytest.raises(ConfigError, match="causal_lm.packing: .*attend to each other.*causal_lm.packing=false"):
        check_packing(Leaky(model), rows(tokenizer))
