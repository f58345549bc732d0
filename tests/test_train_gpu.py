"""The GPU paths: bf16 by default, Liger's kernels on request, MFU in the summary. The CUDA tests skip
without a GPU (run them with `pytest tests/test_train_gpu.py` on a CUDA machine); the refusals run here."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.train.trainer import liger_flag, precision_flags

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_liger_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert liger_flag(False) == {}
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        liger_flag(True)


def test_liger_without_its_package_names_the_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'tunelab\[gpu\]'"):
        liger_flag(True)


def test_a_run_refuses_liger_before_loading_anything(tiny_config, monkeypatch, tmp_path):
    from tunelab.train.run import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        run(tiny_config("train.liger=true"))
    left = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != ".lock")
    assert left == ["events.jsonl", "status.json"]  # only the record that it failed: before the data and the model


@cuda
def test_a_gpu_run_trains_in_bf16_and_reports_mfu(tiny_config):
    from tunelab.train.run import run

    assert precision_flags("auto")["bf16"] == torch.cuda.is_bf16_supported()
    s = run(tiny_config("method=lora", "train.learning_rate=1e-2", "eval.forgetting_probe=false")).summary
    assert s["after"]["eval_loss"] < s["before"]["eval_loss"]
    assert s["resources"]["peak_gpu_bytes"] > 0
    assert s["train"]["model_flops_per_s"] > 0
    if "H100" in torch.cuda.get_device_name() or "A100" in torch.cuda.get_device_name():
        assert 0 < s["train"]["mfu"] < 1


@cuda
def test_liger_kernels_leave_the_loss_unchanged(tiny_config, tmp_path):
    pytest.importorskip("liger_kernel")
    from tunelab.train.run import run

    losses = []
    for liger in ("false", "true"):
        s = run(tiny_config(f"train.liger={liger}", "method=lora", "eval.forgetting_probe=false",
                            f"output_dir={tmp_path / liger}")).summary
        losses.append(s["train"]["final_train_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
