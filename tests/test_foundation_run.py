"""A whole run on the tiny model: loss falls, and the run directory describes itself."""

from __future__ import annotations

import json

import pytest

from tunelab.train.run import run


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    import tests.conftest as c
    from tunelab.config import load_config

    tmp = tmp_path_factory.mktemp("full")
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(24)]
    train = c.write_jsonl(tmp / "train.jsonl", rows[:20])
    held = c.write_jsonl(tmp / "eval.jsonl", rows[20:])
    config = load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama",
                                f"output_dir={tmp / 'run'}", "method=full", "train.learning_rate=3e-3",
                                "train.max_steps=30", "train.batch_size=4", "train.logging_steps=1",
                                "train.eval_steps=10", "train.max_length=64", "eval.max_new_tokens=8"])
    events = []
    result = run(config, on_event=events.append)
    return result, events


def test_training_loss_falls(full_run):
    result, _ = full_run
    losses = [m["train_loss"] for m in read_metrics(result.run_dir) if "train_loss" in m]
    assert len(losses) == 30
    assert losses[-1] < 0.6 * losses[0], losses  # measured: 10.8 -> 5.5


def test_held_out_loss_falls_and_is_logged_on_schedule(full_run):
    result, _ = full_run
    evals = [m for m in read_metrics(result.run_dir) if "eval_loss" in m]
    assert [m["step"] for m in evals][:3] == [10, 20, 30]
    s = result.summary
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"] - 1.0
    assert s["after"]["perplexity"] < s["before"]["perplexity"]


def test_run_directory_is_self_describing(full_run):
    result, _ = full_run
    d = result.run_dir
    for name in ("config.yaml", "versions.json", "data.json", "metrics.jsonl", "summary.json", "report.md",
                 "samples.jsonl", "model/model.safetensors", "model/config.json", "model/tokenizer.json"):
        assert (d / name).is_file(), name
    data = json.loads((d / "data.json").read_text())
    assert data["train"]["rows"] == 20 and data["eval"]["rows"] == 4 and len(data["train"]["sha256"]) == 64
    versions = json.loads((d / "versions.json").read_text())
    assert {"tunelab", "torch", "transformers", "peft", "trl"} <= set(versions)
    summary = json.loads((d / "summary.json").read_text())
    assert set(summary["before"]) == {"eval_loss", "eval_loss_se", "perplexity", "exact_match", "token_f1"}
    assert {"seconds", "tokens", "tokens_per_second", "model_flops_per_s"} <= set(summary["train"])
    assert "mfu" not in summary["train"]  # no known peak on a CPU
    assert summary["trainable_params"] == summary["total_params"]  # full fine-tune


def test_progress_goes_out_as_events(full_run):
    _, events = full_run
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    steps = [e.fields["step"] for e in events if e.kind == "step"]
    assert steps == list(range(1, 31))
    assert all(e.fields["tokens_per_second"] > 0 for e in events if e.kind == "step")


def test_lora_trains_only_the_adapter_and_counts_it_exactly(tiny_config):
    config = tiny_config("method=lora", "lora.r=4", "train.max_steps=2")
    result = run(config)
    # tiny Llama: hidden 64, kv 32, mlp 128, 2 layers; LoRA r=4 on q,k,v,o,gate,up,down
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert result.summary["trainable_params"] == 2 * per_layer
    saved = result.run_dir / "model"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "adapter_config.json").is_file()
    resources = result.summary["resources"]
    # the artifact is what PEFT wrote (fp32 adapter weights, config, model card), not the tokenizer saved beside it
    written = ("adapter_model.safetensors", "adapter_config.json", "README.md")
    assert resources["artifact_bytes"] == sum((saved / name).stat().st_size for name in written)
    assert resources["artifact_bytes"] > 4 * result.summary["trainable_params"]
    assert resources["peak_rss_bytes"] > 100 * 2**20  # torch alone is larger than this


def test_held_out_split_of_train_when_no_eval_file(tiny_config):
    config = tiny_config("train.max_steps=1")
    config.data.eval = None
    config.data.eval_fraction = 0.25
    result = run(config)
    data = json.loads((result.run_dir / "data.json").read_text())
    assert data["eval_is_split_of_train"] and data["train"]["rows"] == 15 and data["eval"]["rows"] == 5


def test_finished_run_directory_is_not_overwritten(tiny_config):
    from tunelab.errors import TunelabError

    run(tiny_config("train.max_steps=1"))
    with pytest.raises(TunelabError, match="already holds a finished run"):
        run(tiny_config("train.max_steps=1"))


def test_task_auto_trains_text_rows_as_causal_lm(tiny_config, tmp_path):
    import tests.conftest as c

    text = c.write_jsonl(tmp_path / "text.jsonl", [{"text": f"Story number {i} begins here."} for i in range(12)])
    config = tiny_config(f"data.train={text}", "train.max_steps=2")
    config.data.eval = None
    result = run(config)
    assert result.summary["task"] == "causal_lm"
    assert set(result.summary["after"]) == {"eval_loss", "perplexity"}  # raw text: no generation metrics; one held-out row: no SE
    assert "task: causal_lm" in (result.run_dir / "config.yaml").read_text()
