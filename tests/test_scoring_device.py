"""Scoring with the model on an accelerator, emulated on the CPU (tests/emulated_device.py): the forgetting
probe's perplexity, and the emulation itself catching what a GPU would refuse."""

from __future__ import annotations

import pytest
import torch

from tests.emulated_device import DeviceMismatch, EmulatedDevice
from tunelab.eval import forgetting
from tunelab.models.loading import LoadRules, ModelSpec, load_pair


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    return load_pair(tiny_model_dir, ModelSpec("causal_lm"), LoadRules())


def test_the_emulated_device_refuses_what_a_gpu_refuses(pair):
    _, model = pair
    with EmulatedDevice() as device:
        device.place(model)
        weight = model.get_input_embeddings().weight
        assert weight.device == torch.device("meta")
        with pytest.raises(DeviceMismatch, match="index_add_"):
            torch.zeros(weight.shape[0]).index_add_(0, torch.tensor([0], device=weight.device), weight[:1, 0])
        with pytest.raises(DeviceMismatch):
            weight.numpy()
        fine = torch.zeros(weight.shape[0], device=weight.device).index_add_(0, torch.tensor([0]).to(weight.device),
                                                                             weight[:1, 0])
        assert fine.cpu().device == torch.device("cpu") and fine.tolist()[0] == pytest.approx(float(weight[0, 0]))


def test_forgetting_perplexity_runs_with_the_model_on_an_accelerator(pair):
    tokenizer, model = pair
    on_cpu = forgetting.measure(model, tokenizer, questions=False)
    with EmulatedDevice() as device:
        device.place(model)
        elsewhere = forgetting.measure(model, tokenizer, questions=False)
    assert elsewhere["perplexity"] == pytest.approx(on_cpu["perplexity"], rel=1e-6)
