"""`tunelab plan`: its arithmetic checked against published numbers (the ZeRO paper, the models' own parameter
counts) and its activation term against what autograd really keeps on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tunelab.plan import GiB, Counts, count, layer_bytes, parse_bytes, plan

PSI = 7_500_000_000  # the ZeRO paper's Figure 1: a 7.5B-parameter model on 64 devices, Adam in mixed precision


def paper_counts() -> Counts:
    return Counts(total=PSI, trainable=PSI, largest_layer=0, root=0, layers=1, hidden=1, kv_hidden=1,
                  intermediate=1, vocab=1)


@pytest.mark.parametrize("preset, published_gb", [("deepspeed-zero2", 16.6), ("deepspeed-zero3", 1.9), ("ddp", 120)])
def test_model_states_match_the_zero_paper(tiny_config, preset, published_gb):
    # Rajbhandari et al. 2020, Fig. 1: baseline (2 + 2 + K) x Psi = 120 GB with K = 12; P_os+g: 2 Psi + 14 Psi / N
    # = 16.6 GB; P_os+g+p: 16 Psi / N = 1.9 GB. tunelab's DDP keeps fp32 weights and gradients with two fp32 Adam
    # moments: also 16 bytes per parameter.
    p = plan(tiny_config(f"distributed={preset}", "train.precision=bf16"), 64, parse_bytes("80GB"),
             counts=paper_counts())
    states = p.per_device["weights"] + p.per_device["gradients"] + p.per_device["optimizer"]
    assert round(states / 1e9, 1) == published_gb


def test_parameter_counts_are_the_models_own(tiny_config):
    from transformers import AutoModelForCausalLM

    from tunelab.methods import count_params, get_method
    from tunelab.models import resolve_model
    from tunelab.models.loading import ModelSpec

    config = tiny_config()
    real = get_method("lora").apply(AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random-llama")), config,
                                    ModelSpec("causal_lm"))
    planned = count(config)
    assert (planned.trainable, planned.total) == count_params(real)
    assert planned.largest_layer == sum(p.numel() for p in real.base_model.model.model.layers[0].parameters())
    # published sizes: Llama-2-7B 6,738,415,616 parameters; Llama-3-70B 70,553,706,496
    assert count(tiny_config("method=full"), "llama-2-7b").total == 6_738_415_616
    assert count(tiny_config("method=full"), "llama-3-70b").total == 70_553_706_496


def saved_bytes_per_token(model, precision: torch.dtype) -> float:
    """Bytes autograd keeps for backward per token of the decoder (two lengths: per-token slope, fixed costs out)."""
    def measure(length: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 1000, (2, length))
        with torch.autocast("cpu", dtype=precision, enabled=precision != torch.float32), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=ids, use_cache=False)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in seen.items() if ptr not in params)

    return (measure(128) - measure(64)) / (2 * 64)


@pytest.mark.parametrize("precision, compute", [(torch.bfloat16, 2), (torch.float32, 4)])
def test_activation_term_matches_what_autograd_keeps(tiny_config, precision, compute):
    from transformers import AutoModelForCausalLM

    from tunelab.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random-llama"))
    measured = saved_bytes_per_token(model, precision)
    c = count(tiny_config("method=full"))
    planned = c.layers * layer_bytes(c, compute)[0]
    # the layers' own terms; the final norm, rotary tables and attention statistics are the small remainder
    assert planned <= measured <= 1.15 * planned, (measured, planned)


def test_plan_cli_shows_each_formula_and_says_whether_it_fits():
    env_cmd = [sys.executable, "-m", "tunelab", "plan", "--shape", "llama-2-7b", "--gpu-memory", "80GB"]
    fits = subprocess.run([*env_cmd, "--gpus", "8", "distributed=fsdp", "method=full",
                           "train.gradient_checkpointing=true"], capture_output=True, text=True, cwd=REPO)
    assert fits.returncode == 0, fits.stderr
    for line in ("weights", "4 x T + 4 x (P - T) / N", "gathered layers", "(root + 2 x largest layer) x c",
                 "activations", "logits (fp32)", "2 x 4 x b x s x V", "fits,"):
        assert line in fits.stdout
    over = subprocess.run([*env_cmd, "--gpus", "1", "method=full", "--json"], capture_output=True, text=True, cwd=REPO)
    assert over.returncode == 1
    result = json.loads(over.stdout)
    assert result["fits"] is False and result["per_device"]["optimizer"] == 8 * result["counts"]["trainable"]
    assert any("sharded" in tip or "shards" in tip for tip in result["advice"])


def test_offload_moves_states_to_the_host_and_more_gpus_are_counted(tiny_config):
    counts = paper_counts()
    on_gpu = plan(tiny_config("distributed=deepspeed-zero3", "train.precision=bf16"), 8, 80 * GiB, counts=counts)
    offload = plan(tiny_config("distributed=deepspeed-zero3-offload", "train.precision=bf16"), 8, 80 * GiB,
                   counts=counts)
    assert offload.per_device["optimizer"] == offload.per_device["weights"] == 0
    moved = on_gpu.per_device["optimizer"] + on_gpu.per_device["weights"] + on_gpu.per_device["gradients"]
    assert abs(offload.host_per_node - 8 * moved) <= 8  # per node: 8 GPUs' share each
    small = plan(tiny_config("distributed=deepspeed-zero3", "train.precision=bf16"), 8, 10 * GiB, counts=counts)
    need = int(next(t for t in small.advice if t.endswith("GPUs with this preset and settings")).split()[0])
    assert not small.fits and plan(tiny_config("distributed=deepspeed-zero3", "train.precision=bf16"), need,
                                   10 * GiB, counts=counts).fits
    assert not plan(tiny_config("distributed=deepspeed-zero3", "train.precision=bf16"), need - 1, 10 * GiB,
                    counts=counts).fits


def test_the_docs_table_is_the_planners_own():
    sys.path.insert(0, str(REPO / "scripts"))
    from plan_table import DOC, block, table

    assert block(DOC.read_text(encoding="utf-8")) == table(), "docs/scale.md's table is stale: run scripts/plan_table.py"
