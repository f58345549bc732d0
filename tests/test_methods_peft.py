"""The PEFT-backed methods beyond LoRA: exact trainable counts, config errors in tunelab's terms, the 8-bit base,
the CUDA-only paged optimizer, and prompt learning through the run's loss and generation."""

from __future__ import annotations

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS, count_params
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, ModelSpec, load_pair, quantized_layers

CAUSAL = ModelSpec("causal_lm")


def config_for(method: str, *overrides: str):
    return load_config(None, ["data.train=x.jsonl", f"method={method}", *overrides])


def tuned(method: str, *overrides: str, spec: ModelSpec = CAUSAL):
    config = config_for(method, *overrides)
    torch.manual_seed(0)
    model = load_pair(resolve_model("tiny-random-llama"), spec, LoadRules(),
                      **METHODS[method].load_options(config, spec))[1]
    return METHODS[method].apply(model, config, spec)


# tiny-random-llama: hidden 64, 2 blocks, k/v project 64 -> 32 (grouped query), MLP 64 -> 128 -> 64.
@pytest.mark.parametrize("method,expected", [
    # r=16 on q (64->64), k, v (64->32), o, gate, up, down: 16 * (128 + 2*96 + 128 + 3*192) = 16384 per block;
    # plus DoRA's magnitude, one per output: 64 + 32 + 32 + 64 + 128 + 128 + 64 = 512 per block.
    ("dora", 2 * (16384 + 512)),
    # IA3 scales k and v outputs (32 each) and down_proj's input (128, feed-forward): 192 per block.
    ("ia3", 2 * (32 + 32 + 128)),
    # 20 virtual tokens of width 64.
    ("prompt-tuning", 20 * 64),
])
def test_trainable_parameter_count_is_exact(method, expected):
    assert count_params(tuned(method))[0] == expected


@pytest.mark.parametrize("method,key", [("lora", "lora.target_modules"), ("dora", "lora.target_modules"),
                                        ("ia3", "ia3.target_modules")])
def test_a_target_matching_nothing_names_the_models_linear_layers(method, key):
    with pytest.raises(ConfigError, match=rf"^{key}: attn matches no layer of this model; its linear layers "
                                          r"are named down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, "
                                          r"up_proj, v_proj$"):
        tuned(method, f"{key}=[attn]")


def test_ia3_feedforward_modules_must_be_targets():
    with pytest.raises(ConfigError, match=r"feedforward_modules \['up_proj'\] must also be in target_modules"):
        config_for("ia3", "ia3.target_modules=[k_proj,down_proj]", "ia3.feedforward_modules=[up_proj]")


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_lora_inits_start_as_the_base_and_train(init):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    torch.manual_seed(0)
    base = load_pair(resolve_model("tiny-random-llama"), CAUSAL, LoadRules())[1]
    expected = base(input_ids=ids).logits
    model = METHODS["lora"].apply(base, config_for("lora", f"lora.init={init}"), CAUSAL)
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    model(input_ids=ids, labels=ids).loss.backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    # orthogonal starts B non-zero (orthogonal to A, so BA = 0); default and gaussian start B at zero
    assert (b.abs().sum() > 0) == (init == "orthogonal")


def test_orthogonal_init_needs_an_even_rank():
    with pytest.raises(ConfigError, match="r must be even, got 7"):
        config_for("lora", "lora.init=orthogonal", "lora.r=7")


def test_lora_int8_base_is_8bit_with_full_precision_heads_and_refuses_to_merge():
    spec = ModelSpec("sequence_classifier", {"num_labels": 3}, ("score",))
    model = tuned("lora-int8", spec=spec)
    import bitsandbytes as bnb

    layers = quantized_layers(model)
    assert len(layers) == 14 and all(isinstance(m, bnb.nn.Linear8bitLt) for m in layers)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "score" in n)
    with pytest.raises(ConfigError, match="lora-int8: merging into quantized layers"):
        METHODS["lora-int8"].merge(model)


def test_lora_int8_adapter_trains_after_an_evaluation_has_run(tiny_config):
    from tunelab.train.run import run

    s = run(tiny_config("method=lora-int8", "train.learning_rate=1e-2", "eval.forgetting_probe=false",
                        "eval.few_shot_k=0")).summary
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"] - 0.3  # as qlora's: the base evaluation ran first
    assert s["trainable_params"] == 32768  # the same r=16 all-linear adapter as qlora's


@pytest.mark.parametrize("method", ["qlora", "lora-int8"])
def test_paged_optimizer_is_refused_on_cpu_before_any_model_loads(monkeypatch, tiny_config, method):
    from tunelab.train import run as run_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_module, "load_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="quantized.paged_optimizer=true needs a CUDA GPU"):
        run_module.run(tiny_config(f"method={method}", "quantized.paged_optimizer=true"))


def test_paged_optimizer_reaches_the_trainer_arguments(tmp_path):
    from tunelab.train.trainer import common_args

    fixed = "train.epochs=1"  # epochs=auto is resolved from the data before trainer arguments exist
    assert common_args(config_for("lora-int8", fixed, "quantized.paged_optimizer=true"), tmp_path)["optim"] \
        == "paged_adamw_8bit"
    assert "optim" not in common_args(config_for("lora-int8", fixed), tmp_path)


def test_prompt_tuning_refuses_a_classifier_by_its_declared_kinds():
    with pytest.raises(ConfigError, match='"prompt-tuning" cannot train a sequence classifier model; it trains '
                                          "causal lm models"):
        METHODS["prompt-tuning"].check_model(None, ModelSpec("sequence_classifier"))


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning", "prefix-tuning"])
def test_held_out_loss_scores_the_inputs_positions_under_prompt_learning(method):
    from tunelab.data.tokens import IGNORE
    from tunelab.tasks.lm import Encoded, heldout_loss

    model = tuned(method).eval()
    ids = list(range(5, 17))
    labels = [IGNORE] * 4 + ids[4:]
    ours = heldout_loss(model, [Encoded(ids, labels)], pad_id=0)["eval_loss"]
    with torch.no_grad():  # PEFT prepends IGNORE labels for the virtual tokens and takes the loss itself
        peft = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert ours == pytest.approx(peft, abs=1e-5)


def first_step_logits(model, tokenizer, prompts: list[list[int]], batch_size: int) -> torch.Tensor:
    """The logits each prompt's first answer token is chosen from, as `generate` computes them in its batches
    (read by a hook on the output head; prompts come back in their own order)."""
    from tunelab.scoring.generate import generate

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, out: seen.append(out[:, -1].detach()))
    try:
        generate(model, tokenizer, prompts, 1, batch_size=batch_size)
    finally:
        hook.remove()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # generate's batches: shortest first
    rows = torch.cat(seen)
    return rows[torch.tensor(order).argsort()]


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning", "prefix-tuning"])
def test_prompt_learning_scores_the_same_batched_as_alone(method, tokenizer):
    """Batched with prompts of other lengths, each prompt's first-step scores are those it gets alone.
    Prompt and p-tuning enter as embeddings whose positions run on through left padding (PEFT drops the
    position ids): padded, the scores moved by about 4e-3 here, so those two batch equal lengths only."""
    model = tuned(method)
    torch.manual_seed(1)
    for p in model.parameters():  # a prompt far from its start, so that it steers what comes out
        if p.requires_grad:
            p.data.add_(torch.randn_like(p))
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [16, 17, 18]]
    alone = torch.cat([first_step_logits(model, tokenizer, [p], 1) for p in prompts])
    batched = first_step_logits(model, tokenizer, prompts, 4)
    assert (batched - alone).abs().max().item() < 1e-4
    with METHODS[method].disabled(model) as base:
        assert (first_step_logits(base, tokenizer, prompts, 1) - alone).abs().max().item() > 1e-2


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_learning_runs_through_sft_with_generation(tiny_config, method):
    from tunelab.train.run import run

    s = run(tiny_config(f"method={method}", "train.learning_rate=1e-1", "eval.forgetting_probe=false",
                        "eval.few_shot_k=0")).summary
    assert {"exact_match", "token_f1"} <= set(s["after"])
    # The tiny random model moves little under prompt learning: in these 4 steps at the default rates it fell
    # 10.771 -> 10.754 (prompt-tuning, 3e-2) and -> 10.739 (prefix-tuning, 1e-3); at 1e-1 by more than 0.02.
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"] - 0.02
