"""BitFit: only the bias terms train (Ben Zaken et al., 2022).

Llama-family models have no biases: the base is loaded with `attention_bias=True, mlp_bias=True`, which
adds zero-initialised biases to q/k/v/o and gate/up/down, so the untrained model computes exactly what the
base computes, and only those train. BERT-like models train the biases they have (LayerNorm's included).

Merging keeps the biases as weights of a plain model whose config says `attention_bias`/`mlp_bias` true:
it loads with transformers as it is, but a consumer that assumes a bias-free Llama (some GGUF converters)
will not take it.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from tunelab.methods import _partial
from tunelab.methods.base import register_method
from tunelab.models import resolve_model
from tunelab.models.loading import ModelSpec

# Config flags that add zero-initialised biases to models that have none (transformers' Llama, Mistral, ...).
BIAS_FLAGS = ("attention_bias", "mlp_bias")


class Bitfit(_partial.PartialMethod):
    name = "bitfit"
    description = ("Only bias terms train (BitFit). Llama, which has none, is loaded with zero biases on its "
                   "attention and MLP projections, so step 0 equals the base.")
    trains = "bias terms (+ task heads)"
    default_learning_rate = 1e-3
    mergeable = True  # the merged config keeps attention_bias/mlp_bias true

    def load_options(self, config: Any, spec: ModelSpec) -> dict[str, Any]:
        # Read the base's config.json (no code runs): only a flag the architecture knows may be passed, since
        # from_pretrained hands unknown options to the model's constructor, which refuses them.
        path = resolve_model(config.model) / "config.json"
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {flag: True for flag in BIAS_FLAGS if known.get(flag) is False}

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        _partial.freeze_all_but_heads(model, spec)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)
        _partial.require_something_trains(model, "bitfit")
        _partial.remember_base(model)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the biases are weights of the plain model, and its config already declares them


register_method(Bitfit())
