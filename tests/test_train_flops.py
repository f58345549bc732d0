"""Model FLOPs per token (PaLM's 6N + 12·L·d·T) and MFU against a known GPU peak."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tunelab.train import flops
from tunelab.train.flops import flops_per_token, peak_flops, throughput


def llama(tied: bool) -> torch.nn.Module:
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(config)


def layer_params() -> int:
    attention = 64 * 64 * 2 + 64 * 32 * 2  # q, o: 64x64; k, v: 64x32 (2 of 4 heads' width)
    mlp = 3 * 64 * 128
    return attention + mlp + 2 * 64  # two RMSNorm weights


@pytest.mark.parametrize("tied", [True, False])
def test_the_head_counts_and_the_input_embedding_does_not(tied):
    n = 3 * layer_params() + 64 + 1000 * 64  # layers, final norm, output projection
    assert flops_per_token(llama(tied), 100) == 6 * n + 12 * 3 * 64 * 100


def test_mfu_against_the_device_peak(monkeypatch):
    model = llama(True)
    per_token = flops_per_token(model, 50)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    out = throughput(model, tokens=10_000, sequences=200, seconds=2.0, precision="bf16")
    assert out["model_flops_per_s"] == round(per_token * 5000)
    assert out["mfu"] == round(per_token * 5000 / 989e12, 4)
    assert "mfu" not in throughput(model, 10_000, 200, 2.0, "fp32")  # no fp32 peak in the table


def test_peaks_match_the_most_specific_name_first():
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == 312e12
    assert peak_flops("AMD EPYC", "bf16") is None
    assert all(names.index(a) < names.index(b) for names in [[n for n, _ in flops.PEAK_FLOPS["bf16"]]]
               for a in names for b in names if a != b and b in a)


def test_no_tokens_no_numbers():
    assert throughput(llama(True), 0, 0, 1.0, "bf16") == {}
