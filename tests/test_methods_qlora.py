"""QLoRA on CPU: a 4-bit NF4 base with double quantization under LoRA, and the bitsandbytes traps it guards."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, ModelSpec, load_pair, quantized_layers


def qlora_base():
    config = load_config(None, ["data.train=x.jsonl", "method=qlora"])
    spec = ModelSpec("causal_lm")
    return config, spec, load_pair(resolve_model("tiny-random-llama"), spec, LoadRules(),
                                   **METHODS["qlora"].load_options(config, spec))[1]


def test_the_base_is_nf4_with_double_quantization_and_never_repacks_on_cpu():
    _, _, model = qlora_base()
    layers = quantized_layers(model)
    assert len(layers) == 14  # 2 blocks x (q, k, v, o, gate, up, down); embeddings and head stay fp32
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: the constants are quantized too
    # Before any forward: an eval-mode forward would repack and stop gradients on avx512_bf16 CPUs.
    assert all(layer.support_avx512bf16_for_cpu is False for layer in layers)


def test_the_adapter_trains_after_an_evaluation_has_run(tiny_config):
    from tunelab.train.run import run

    result = run(tiny_config("method=qlora", "train.learning_rate=1e-2", "eval.forgetting_probe=false",
                             "eval.few_shot_k=0"))
    s = result.summary
    # The zero-shot evaluation ran before training; measured 10.77 -> 10.28 in the 4 steps.
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"] - 0.3
    adapter = load_file(result.run_dir / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    # r=16 on q (64->64), k, v (64->32), o (64->64), gate, up (64->128), down (128->64), in 2 blocks
    per_block = 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))
    assert s["trainable_params"] == 2 * per_block == 32768


def test_merging_into_4bit_layers_is_refused():
    config, spec, model = qlora_base()
    tuned = METHODS["qlora"].apply(model, config, spec)
    with pytest.raises(ConfigError, match="full-precision base"):
        METHODS["qlora"].merge(tuned)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_trains_on_cuda(tiny_config):
    from tunelab.train.run import run

    s = run(tiny_config("method=qlora", "train.learning_rate=1e-2", "eval.forgetting_probe=false")).summary
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"]
