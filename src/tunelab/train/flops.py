"""Model FLOPs of a training run, and the model FLOPs utilisation (MFU) on a GPU whose peak is known.

Model FLOPs per trained token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B):
6N + 12·L·d·T, with N the parameters outside the input embedding (the output projection counts,
also when it shares the embedding's weights: its matmul is real), L layers of width d and T tokens per
sequence. It counts what the model's training arithmetic is, not what a run executes: a LoRA step
does less (no weight gradients for frozen layers) and so does tunelab's loss at supervised positions
only, so MFU compares runs on one scale, the scale every other tool reports on.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.methods import count_params

# Dense (no sparsity) tensor-core peaks per GPU in FLOP/s, from the vendors' data sheets; matched by
# the first name that occurs in torch.cuda.get_device_name() (so "H100 PCIe" comes before "H100").
PEAK_FLOPS = {
    "bf16": [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("RTX 4090", 165e12)],
}
PEAK_FLOPS["fp16"] = PEAK_FLOPS["bf16"]


def flops_per_token(model: torch.nn.Module, tokens_per_sequence: float) -> float:
    """6N + 12·L·d·T for the model as trained (adapter parameters included in N)."""
    config = _text_config(model)
    embedding_only = _weights(model, "get_input_embeddings") - _weights(model, "get_output_embeddings")
    n = count_params(model)[1] - sum(p.numel() for p in embedding_only)
    layers, width = getattr(config, "num_hidden_layers", 0), getattr(config, "hidden_size", 0)
    return 6 * n + 12 * layers * width * tokens_per_sequence


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's dense peak in this precision, or None when unknown (every CPU, fp32 on a GPU)."""
    return next((peak for name, peak in PEAK_FLOPS.get(precision, []) if name in device_name), None)


def throughput(model: torch.nn.Module, tokens: int, sequences: int, seconds: float, precision: str) -> dict[str, Any]:
    """The summary's model FLOPs entries: model_flops_per_s always, mfu on a GPU whose peak is known."""
    if not tokens or not sequences or seconds <= 0:
        return {}
    per_second = flops_per_token(model, tokens / sequences) * tokens / seconds
    out: dict[str, Any] = {"model_flops_per_s": round(per_second)}
    peak = peak_flops(torch.cuda.get_device_name(), precision) if torch.cuda.is_available() else None
    if peak:
        out["mfu"] = round(per_second / peak, 4)
    return out


def _weights(model: torch.nn.Module, getter: str) -> set[torch.nn.Parameter]:
    module = getattr(model, getter)() if hasattr(model, getter) else None
    return set(module.parameters()) if module is not None else set()


def _text_config(model: torch.nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return getattr(config, "text_config", None) or config
