"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): a small down-project, non-linearity,
up-project with a residual, on the output of each block's attention output projection and MLP output
projection (Houlsby) or the MLP's only (Pfeiffer).

No library provides them for transformers 5 (AdapterHub's `adapters` pins transformers 4), so they are
small modules attached by forward hooks to the projections (Llama `o_proj`/`down_proj`, BERT
`attention.output.dense`/`output.dense`, GPT-2 `c_proj`), which works for any decoder or encoder whose
blocks project back to `hidden_size`. The up-projection starts at zero: an untrained adapter is the identity.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.methods import _partial
from tunelab.methods.base import register_method
from tunelab.models.loading import ModelSpec
from tunelab.settings import Section, register_section

ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}
NAME = "bottleneck_adapter"  # the attached child's name, under the projection it follows


class AdapterSettings(Section):
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="pfeiffer: one adapter after each block's MLP; houlsby: after attention and MLP.")
    reduction_factor: int = Field(16, ge=1, description="Bottleneck width = hidden_size / reduction_factor.")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "silu", description="Bottleneck non-linearity (silu has no dead units; Pfeiffer used relu).")


register_section("adapter", AdapterSettings)


class Bottleneck(_partial.Attached):
    """x + up(act(down(x))); up starts at zero, so the adapter starts as the identity."""

    def __init__(self, width: int, reduction_factor: int, activation: str, like: torch.Tensor):
        super().__init__()
        inner = max(1, width // reduction_factor)
        self.down = torch.nn.Linear(width, inner, device=like.device, dtype=like.dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(inner, width, device=like.device, dtype=like.dtype)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def adjust(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output + self.up(self.act(self.down(output)))


def adapted_layers(model: torch.nn.Module, placement: str) -> list[torch.nn.Module]:
    """Per block, the last attention projection and the last other projection back to hidden_size."""
    width = model.config.hidden_size
    found = []
    for block in _partial.blocks(model):
        outputs = [(n, m) for n, m in block.named_modules() if _partial.out_features(m) == width]
        attention = [m for n, m in outputs if "attn" in n or "attention" in n]
        mlp = [m for n, m in outputs if not ("attn" in n or "attention" in n)]
        if not attention or not mlp:
            raise ConfigError(f"adapter: cannot find the attention and MLP output projections of "
                              f"{type(block).__name__} (linear layers back to hidden_size={width})")
        found += [attention[-1], mlp[-1]] if placement == "houlsby" else [mlp[-1]]
    return found


def add_adapters(model: torch.nn.Module, settings: dict[str, Any]) -> None:
    """Attach adapters as `settings` (adapter.* options) say, and keep those settings for `save`."""
    model.tunelab_adapter_settings = {k: settings[k] for k in AdapterSettings.model_fields}
    for layer in adapted_layers(model, settings["placement"]):
        width = _partial.out_features(layer)
        _partial.attach(layer, NAME, Bottleneck(width, settings["reduction_factor"], settings["activation"],
                                                layer.weight))


class Adapter(_partial.PartialMethod):
    name = "adapter"
    description = ("Bottleneck adapters (Houlsby: after attention and MLP; Pfeiffer: after the MLP), attached by "
                   "forward hooks to any transformers decoder or encoder; identity at the start.")
    trains = "bottleneck adapters in every block (+ task heads)"
    default_learning_rate = 1e-3
    sections = ("adapter",)
    mergeable = False  # the bottleneck is non-linear: it cannot fold into a weight

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        _partial.freeze_all_but_heads(model, spec)
        add_adapters(model, config.adapter.model_dump())
        _partial.remember_base(model)
        return model

    def settings(self, model: torch.nn.Module) -> dict[str, Any]:
        return model.tunelab_adapter_settings

    def rebuild(self, base: torch.nn.Module, settings: dict[str, Any]) -> None:
        add_adapters(base, settings)


register_method(Adapter())
