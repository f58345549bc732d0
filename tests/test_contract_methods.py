"""The method contract, run over every registered method and every model kind it supports, on tiny
random models: a method is not done until it passes all of these."""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS, count_params
from tunelab.models import resolve_model
from tunelab.models.loading import full_precision, LoadRules, ModelSpec, load_pair

KINDS = {
    "causal_lm": ("tiny-random-llama", ModelSpec("causal_lm")),
    "llama_classifier": ("tiny-random-llama", ModelSpec("sequence_classifier", {"num_labels": 3}, ("score", "classifier"))),
    "bert_classifier": ("tiny-random-bert", ModelSpec("sequence_classifier", {"num_labels": 3}, ("score", "classifier"))),
}
# Methods that train a few thousand numbers far from the tiny random models' random output head fall slowly
# there at 1e-2 (12 steps, causal LM: ia3 0.03 nats, prompt-tuning 0.03); they train at their own rate and must
# fall at least 0.1 nats. Measured at these rates: ia3 0.21 (causal) to 1.0, prompt-tuning 0.14, p-tuning 0.20,
# prefix-tuning 0.12 (bert classifier) and 0.28 (causal). Real falls on the bundled model: docs/methods-peft.md.
CONTRACT_RATE = {"ia3": 1e-1, "prompt-tuning": 1e-1}
MIN_FALL = {"ia3": 0.1, "prompt-tuning": 0.1, "p-tuning": 0.1, "prefix-tuning": 0.1}
CASES = [(m, k) for m in sorted(METHODS) for k in sorted(KINDS) if KINDS[k][1].kind in METHODS[m].kinds]


def config_for(method: str, alias: str = "tiny-random-llama"):
    """The method's config for a run of `alias` (load_options may read the base's config.json)."""
    common = ["data.train=unused.jsonl", f"method={method}", f"model={alias}"]
    return load_config(None, [*common, "lora.dropout=0"] if "lora" in METHODS[method].sections else common)


def load(method: str, kind: str, quantized: bool = True):
    """A base as the method's load_options ask (quantized=False: the same, in full precision)."""
    alias, spec = KINDS[kind]
    torch.manual_seed(0)  # the new head starts the same in every load
    options = METHODS[method].load_options(config_for(method, alias), spec)
    if not quantized:
        options = full_precision(options)
    return load_pair(resolve_model(alias), spec, LoadRules(), **options)[1], spec


def batch(kind: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (4, 3), generator=gen).repeat(1, 4)  # a repeating pattern a model can learn
    labels = ids.clone() if kind == "causal_lm" else torch.tensor([0, 1, 2, 1])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def outputs(model: torch.nn.Module, kind: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        inputs = batch(kind)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
    # Prompt learning puts its virtual tokens' positions first: compare the input's own positions.
    return logits[:, -inputs["input_ids"].size(1):] if kind == "causal_lm" else logits


def train_steps(model: torch.nn.Module, kind: str, steps: int = 12, lr: float = 1e-2) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch(kind)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def trained():
    """Each (method, kind): the base's logits, the tuned model, what changed, and the losses."""
    cache: dict = {}

    def get(method: str, kind: str):
        if (method, kind) not in cache:
            base, spec = load(method, kind)
            try:
                METHODS[method].check_model(base, spec)
            except ConfigError as err:  # a model the method declares it cannot train, refused before training
                pytest.skip(f"{method} refuses {kind}: {err}")
            base_out = outputs(base, kind)
            tuned = METHODS[method].apply(base, config_for(method, KINDS[kind][0]), spec)
            before = snapshot(tuned)
            losses = train_steps(tuned, kind, lr=CONTRACT_RATE.get(method, 1e-2))
            after = snapshot(tuned)
            changed = {n for n in before if not torch.equal(before[n], after[n])}
            cache[method, kind] = (base_out, tuned, spec, changed, losses)
        return cache[method, kind]

    return get


@pytest.mark.parametrize("method,kind", CASES)
def test_only_the_methods_parameters_change_and_the_count_is_exact(trained, method, kind):
    _, tuned, _, changed, _ = trained(method, kind)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    unique = {id(p): p for n, p in tuned.named_parameters() if n in changed}
    assert count_params(tuned)[0] == sum(p.numel() for p in unique.values())


# Cases that learn slowly by design, with their measured fall in these 12 steps. The frozen-body methods train
# few tensors of a random model whose features are small (the tiny BERT's pooled features: mean |x| 0.076,
# rows differ by 0.049): bitfit 0.31 (causal) and 0.17 (BERT: a bias moves every row alike); adapter 0.30
# (causal: the same whether Pfeiffer or Houlsby, reduction 16 or 4, relu or silu) and 0.13 (BERT); diff-pruning
# at 0.5% (~21 entries of a 64x64 weight) 0.35 and 0.13; freeze on BERT (embeddings, pooler frozen) 0.38.
SLOW_FALL = {("bitfit", "causal_lm"): 0.2, ("bitfit", "bert_classifier"): 0.1,
             ("adapter", "causal_lm"): 0.2, ("adapter", "bert_classifier"): 0.08,
             ("diff-pruning", "causal_lm"): 0.2, ("diff-pruning", "bert_classifier"): 0.08,
             ("freeze", "bert_classifier"): 0.25}


@pytest.mark.parametrize("method,kind", CASES)
def test_loss_falls_on_a_repeated_batch(trained, method, kind):
    losses = trained(method, kind)[4]
    # nats, in 12 steps at 1e-2; measured falls 0.9 (lora, causal) to 10+. The last three steps' mean, since
    # AdamW at 1e-2 on four rows spikes now and then (dora, llama classifier: 0.02 then 0.91 at step 12).
    assert sum(losses[-3:]) / 3 < losses[0] - SLOW_FALL.get((method, kind), MIN_FALL.get(method, 0.5))


@pytest.mark.parametrize("method,kind", CASES)
def test_save_then_load_gives_identical_outputs(trained, tmp_path, method, kind):
    _, tuned, spec, _, _ = trained(method, kind)
    METHODS[method].save(tuned, tmp_path)
    base, _ = load(method, kind)
    loaded = METHODS[method].load(base, tmp_path, spec, LoadRules())
    assert torch.equal(outputs(loaded, kind), outputs(tuned, kind))


@pytest.mark.parametrize("method,kind", CASES)
def test_switched_off_gives_the_base_outputs(trained, method, kind):
    base_out, tuned, spec, _, _ = trained(method, kind)
    try:
        with METHODS[method].disabled(tuned) as reference:
            off = outputs(reference, kind)
    except ConfigError:
        pytest.skip(f"{method} has no switched-off view (declared by raising ConfigError)")
    assert torch.equal(off, base_out)
    assert not torch.equal(outputs(tuned, kind), base_out)


@pytest.mark.parametrize("method,kind", [c for c in CASES if METHODS[c[0]].mergeable])
def test_merged_equals_unmerged(trained, tmp_path, method, kind):
    _, tuned, spec, _, _ = trained(method, kind)
    METHODS[method].save(tuned, tmp_path)
    base, _ = load(method, kind, quantized=False)  # merging needs a full-precision base
    plain = {name for name, _ in base.named_parameters()}
    unmerged = METHODS[method].load(base, tmp_path, spec, LoadRules())
    expected = outputs(unmerged, kind)
    merged = METHODS[method].merge(copy.deepcopy(unmerged))
    assert {name for name, _ in merged.named_parameters()} == plain  # no adapter left
    assert torch.allclose(outputs(merged, kind), expected, atol=1e-4)
    if "quantization_config" in METHODS[method].load_options(config_for(method, KINDS[kind][0]), spec):
        # Trained over a quantized base, merged onto full precision: compared with the model the run trained
        # (not only with the adapter over a full-precision base, above), the export carries a quantization gap.
        # It is real (> 0) and small beside what the tune moved; a merge that lost the tune would show it whole.
        # Measured, gap / learned: qlora 5.3% (causal), 2.8% (llama classifier), 1.1% (bert); lora-int8 0.5%,
        # 0.2%, 0.005%. export/verify.py reports it for every such export.
        gap = float((outputs(merged, kind) - outputs(tuned, kind)).abs().max())
        learned = float((outputs(tuned, kind) - trained(method, kind)[0]).abs().max())
        assert 0 < gap < 0.1 * learned, (gap, learned)


def test_methods_without_merge_say_so():
    for method in METHODS.values():
        if not method.mergeable:
            with pytest.raises(ConfigError, match="cannot merge"):
                method.merge(torch.nn.Linear(2, 2))


def test_a_cuda_only_method_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    from tunelab.methods import base
    from tunelab.train import run as run_module

    class CudaOnly(base.Method):
        name, devices = "cuda-only", ("cuda",)

    monkeypatch.setitem(METHODS, "cuda-only", CudaOnly())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_module, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    config = config_for("full")
    config.method = "cuda-only"
    with pytest.raises(ConfigError, match='"cuda-only" needs cuda; this machine has no GPU'):
        run_module.run(config)
