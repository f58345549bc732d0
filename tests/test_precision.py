"""Every precision a user can choose works through a whole run on the tiny model, on any x86 CPU.

bf16 is forced here, not left to `auto`: CPU autocast runs bf16 on every x86 CPU (emulated and slower
where the CPU lacks avx512_bf16/AMX), so the path that `auto` picks on Zen 4 or Sapphire Rapids runs on
every machine that runs the suite. A spy on one layer records the dtype each forward computed in.
"""

from __future__ import annotations

import pytest
import torch

import tunelab.train.run as run_module
from tunelab.errors import ConfigError
from tunelab.export.build import export_run
from tunelab.precision import autocast, resolve
from tunelab.train.run import run

DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype_spy(monkeypatch) -> list[tuple[bool, torch.dtype]]:
    """Make run() record (training?, output dtype) for every forward of the first layer's MLP output projection."""
    seen: list[tuple[bool, torch.dtype]] = []
    original = run_module.load_pair

    def load_pair(*args, **kwargs):
        tokenizer, model = original(*args, **kwargs)
        layer = model.model.layers[0].mlp.down_proj
        layer.register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
        return tokenizer, model

    monkeypatch.setattr(run_module, "load_pair", load_pair)
    return seen


@pytest.mark.parametrize("method, precision", [("lora", "fp32"), ("lora", "bf16"), ("full", "fp32"), ("full", "bf16"),
                                               ("prompt-tuning", "bf16")])
def test_a_run_trains_validates_and_scores_in_its_precision(tiny_config, monkeypatch, precision, method):
    seen = dtype_spy(monkeypatch)
    result = run(tiny_config(f"method={method}", f"train.precision={precision}", "train.eval_steps=2",
                             "eval.forgetting_probe=true", "eval.few_shot_k=2"))
    trained = {dtype for training, dtype in seen if training}
    scored = {dtype for training, dtype in seen if not training}
    assert trained == scored == {DTYPE[precision]}, (trained, scored)
    assert sum(training for training, _ in seen) >= 4 and len(seen) > 2 * sum(training for training, _ in seen)
    s = result.summary
    assert s["train"]["precision"] == precision
    assert len(s["after"]) == len(s["before"]) and "exact_match" in s["after"]  # generation ran before and after
    assert s["forgetting"]["questions"] > 0 and "2-shot" in [b["label"] for b in s["baselines"].values()]


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_where_the_cpu_has_it_natively_and_fp32_elsewhere(tiny_config, monkeypatch, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("tunelab.precision.cpu_has_bf16", lambda: native)
    seen = dtype_spy(monkeypatch)
    result = run(tiny_config("train.precision=auto", "eval.generate=false"))
    expected = "bf16" if native else "fp32"
    assert resolve("auto") == expected and result.summary["train"]["precision"] == expected
    assert {dtype for _, dtype in seen} == {DTYPE[expected]}


def test_fp16_on_a_machine_without_a_gpu_is_refused_before_anything_loads(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = []
    monkeypatch.setattr(run_module, "load_data", lambda *a: loaded.append(a))
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA GPU"):
        run(tiny_config("train.precision=fp16"))
    assert loaded == []


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def dynamic_cache_answer(model, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    from transformers import DynamicCache

    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, disable_compile=True,
                         past_key_values=DynamicCache(config=model.config))
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generation_gives_the_same_answers_in_every_cache_layout(tiny_lm, precision):
    """Static cache, batched rows, and a shared prefix read once: the answers of a plain dynamic cache."""
    from tunelab.scoring.generate import generate

    tokenizer, model = tiny_lm
    head = tokenizer("System: answer briefly and truthfully, in one line. Question:")["input_ids"]
    bare = [tokenizer(f"Q{i} " + "A1 " * (i % 5) + "Q2")["input_ids"] for i in range(7)]
    with autocast(precision):
        for prompts in (bare, [head + p for p in bare]):
            reference = [dynamic_cache_answer(model, tokenizer, p, 12) for p in prompts]
            assert [generate(model, tokenizer, [p], 12)[0] for p in prompts] == reference
            assert generate(model, tokenizer, prompts, 12, batch_size=8) == reference
            assert len(set(reference)) > 1  # the prompts lead to different answers, so a mix-up would show


def test_a_bf16_full_fine_tune_exports_a_merged_model_that_verifies(tiny_config, tmp_path):
    run_dir = run(tiny_config("method=full", "train.precision=bf16", "train.learning_rate=1e-2",
                              "eval.forgetting_probe=false", "eval.few_shot_k=0")).run_dir
    report = export_run(run_dir, "merged", tmp_path / "merged")
    assert report["checks"]["merged"]["max_logit_difference"] <= 1e-4
