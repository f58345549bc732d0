"""tunelab's own methods (freeze, adapter, bitfit, diff-pruning): what exactly trains, counted by hand on the
tiny random Llama (hidden 64, 2 blocks, 4 heads of 16, 2 key/value heads, MLP 128, vocabulary 49152) and
BERT (hidden 32, MLP 64), identity at the start, and what is stored."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.methods import METHODS, count_params
from tunelab.methods._partial import TENSORS
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, ModelSpec, load_pair

CAUSAL = ModelSpec("causal_lm")
CLASSIFIER = ModelSpec("sequence_classifier", {"num_labels": 3}, ("score", "classifier"))
IDS = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(3))


def tuned(method: str, *overrides: str, alias: str = "tiny-random-llama", spec: ModelSpec = CAUSAL):
    """(base logits, tuned model, config) for the method with these settings."""
    config = load_config(None, ["data.train=x.jsonl", f"method={method}", f"model={alias}", *overrides])
    torch.manual_seed(0)
    model = load_pair(resolve_model(alias), spec, LoadRules(), **METHODS[method].load_options(config, spec))[1]
    return logits(model), METHODS[method].apply(model, config, spec), config


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def step(model: torch.nn.Module, steps: int = 1) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# freeze

LLAMA_BLOCK = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64  # q, o; k, v; gate, up, down; two RMSNorms


def test_freeze_trains_exactly_the_last_blocks():
    _, model, _ = tuned("freeze", "freeze.train_last_blocks=1")
    assert trainable(model) == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    assert count_params(model)[0] == LLAMA_BLOCK == 36_992


def test_freeze_head_on_a_tied_llama_trains_the_embedding_counted_once():
    _, model, _ = tuned("freeze", "freeze.train_last_blocks=0", "freeze.train_head=true")
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.requires_grad
    assert count_params(model)[0] == 49152 * 64


def test_freeze_on_a_classifier_trains_the_new_head_and_saves_only_what_trained(tmp_path):
    _, model, _ = tuned("freeze", "freeze.train_last_blocks=1", spec=CLASSIFIER)
    assert count_params(model)[0] == LLAMA_BLOCK + 3 * 64  # + score (no bias)
    METHODS["freeze"].save(model, tmp_path)
    assert set(load_file(tmp_path / TENSORS)) == trainable(model)


def test_freeze_refuses_more_blocks_than_the_model_has():
    with pytest.raises(Exception, match="train_last_blocks=3, but LlamaForCausalLM has 2 transformer blocks"):
        tuned("freeze", "freeze.train_last_blocks=3")


# adapter

def adapter_params(width: int, reduction: int) -> int:
    inner = width // reduction
    return width * inner + inner + inner * width + width


@pytest.mark.parametrize("placement,per_block", [("pfeiffer", 1), ("houlsby", 2)])
def test_adapter_counts_and_identity_at_the_start(placement, per_block):
    base, model, _ = tuned("adapter", f"adapter.placement={placement}")
    assert count_params(model)[0] == 2 * per_block * adapter_params(64, 16) == per_block * 1160
    assert torch.equal(logits(model), base)
    hooked = {n.rsplit(".bottleneck_adapter", 1)[0] for n in trainable(model)}
    expected = {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
    assert hooked == (expected | {f"model.layers.{i}.self_attn.o_proj" for i in range(2)}
                      if placement == "houlsby" else expected)


def test_adapter_on_bert_follows_both_output_projections():
    _, model, _ = tuned("adapter", "adapter.placement=houlsby", alias="tiny-random-bert", spec=CLASSIFIER)
    hooked = {n.rsplit(".bottleneck_adapter", 1)[0] for n in trainable(model) if "adapter" in n}
    assert hooked == {f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in ("attention.output.dense",
                                                                                   "output.dense")}
    assert count_params(model)[0] == 4 * adapter_params(32, 16) + 3 * 32 + 3


def test_adapter_trains_under_gradient_checkpointing():
    _, model, _ = tuned("adapter")
    model.gradient_checkpointing_enable()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    step(model, 2)  # the first step moves only `up` (zero at the start); the second reaches `down`
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


# bitfit

def test_bitfit_on_llama_adds_zero_biases_and_starts_at_the_base_exactly():
    plain = load_pair(resolve_model("tiny-random-llama"), CAUSAL, LoadRules())[1]
    _, model, _ = tuned("bitfit")
    assert torch.equal(logits(model), logits(plain))
    # q, o (64), k, v (32), gate, up (128), down (64) in 2 blocks; no norm has a bias
    assert count_params(model)[0] == 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64) == 1024
    assert all(n.endswith(".bias") for n in trainable(model))


def test_bitfit_on_bert_trains_its_biases_and_the_new_head():
    _, model, _ = tuned("bitfit", alias="tiny-random-bert", spec=CLASSIFIER)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    assert count_params(model)[0] == biases + 3 * 32 == 643 + 96  # BERT has 643 bias values with the head's


def test_bitfit_saves_only_biases(tmp_path):
    _, model, _ = tuned("bitfit")
    step(model)
    METHODS["bitfit"].save(model, tmp_path)
    saved = load_file(tmp_path / TENSORS)
    assert saved and all(k.endswith(".bias") for k in saved) and sum(v.numel() for v in saved.values()) == 1024


# diff-pruning

def test_diff_pruning_stores_only_density_times_n_entries_and_reloads_exactly(tmp_path):
    base, model, _ = tuned("diff-pruning", "diff_pruning.density=0.01")
    assert torch.equal(logits(model), base)
    step(model, 3)
    METHODS["diff-pruning"].save(model, tmp_path)
    saved = load_file(tmp_path / TENSORS)
    # per block: q, o (64x64 -> 41 each), k, v (64x32 -> 21), gate, up, down (64x128 -> 82)
    kept = 2 * (2 * 41 + 2 * 21 + 3 * 82)
    assert sum(v.numel() for k, v in saved.items() if k.endswith(".values")) == kept == 740
    assert sum(v.numel() for k, v in saved.items() if k.endswith(".indices")) == kept
    assert set(saved) == {k for k in saved if k.endswith((".values", ".indices"))}
    fresh = load_pair(resolve_model("tiny-random-llama"), CAUSAL, LoadRules())[1]
    loaded = METHODS["diff-pruning"].load(fresh, tmp_path, CAUSAL, LoadRules())
    assert torch.equal(logits(loaded), logits(model))
    info = METHODS["diff-pruning"].info(loaded)
    assert info["delta_entries"] == kept and info["delta_density_of_block_weights"] == pytest.approx(0.01, abs=2e-4)


def test_diff_pruning_changes_only_the_masked_entries_and_they_are_the_largest_gradients():
    _, model, _ = tuned("diff-pruning", "diff_pruning.density=0.05")
    layer = model.model.layers[0].self_attn.q_proj
    layer.weight.requires_grad_(True)
    model.eval()  # no dropout in Llama: the same gradient as in training, without choosing the mask here
    grad = torch.autograd.grad(model(input_ids=IDS, labels=IDS).loss, layer.weight)[0]
    layer.weight.requires_grad_(False)
    step(model)  # the first training batch chooses the mask
    chosen = set(layer.sparse_delta.indices.tolist())
    assert chosen == set(torch.topk(grad.abs().flatten(), 205).indices.tolist())  # ceil(0.05 * 4096)
    merged = METHODS["diff-pruning"].merge(model).model.layers[0].self_attn.q_proj.weight
    assert not hasattr(layer, "sparse_delta")
    changed = (merged != load_pair(resolve_model("tiny-random-llama"), CAUSAL, LoadRules())[1]
               .model.layers[0].self_attn.q_proj.weight).flatten().nonzero().flatten().tolist()
    assert set(changed) <= chosen and len(changed) > 100


def test_diff_pruning_records_its_density_in_the_run_summary(tiny_config):
    from tunelab.train.run import run

    s = run(tiny_config("method=diff-pruning", "diff_pruning.density=0.01", "eval.forgetting_probe=false",
                        "eval.few_shot_k=0")).summary
    assert s["method_info"]["delta_entries"] == 740 and s["method_info"]["delta_entries_changed"] > 700
    assert s["trainable_params"] == 740


def test_diff_pruning_settings_are_checked():
    with pytest.raises(Exception, match="density"):
        load_config(None, ["data.train=x.jsonl", "method=diff-pruning", "diff_pruning.density=0"])
