"""Diff pruning: the tuned model is the frozen base plus a sparse delta (Guo et al., 2021).

The paper learns which weights may change with L0 hard-concrete gates on a dense delta, then fine-tunes
again with the mask fixed; measured here, the gates alone took several GB on the 135M model. tunelab uses
the cheap scheme faithful to the idea: on the first `mask_batches` training batches it measures |dL/dW| of
every linear weight in the transformer blocks, keeps the top `density` share of each weight's entries,
and from then on trains only those entries (a value per kept entry; the base never changes). Differences
from the paper: the mask is chosen once from gradients, not learned; the density is exact per weight, not
a global expected L0; embeddings and norms get no delta. A task's new head trains whole.

Only the kept entries are stored (indices + values); merging adds them to the weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.methods import _partial
from tunelab.methods.base import register_method
from tunelab.models.loading import ModelSpec
from tunelab.settings import Section, register_section

NAME = "sparse_delta"  # the attached child's name, under the linear layer it changes


class DiffPruningSettings(Section):
    density: float = Field(0.005, gt=0, le=1, description="Share of each block weight's entries that may change.")
    mask_batches: int = Field(1, ge=1, description="Training batches whose gradient magnitudes choose the mask "
                                                   "(the steps before it is chosen train only task heads).")


register_section("diff_pruning", DiffPruningSettings)


class SparseDelta(_partial.Attached):
    """`count` trainable entries of a weight-shaped delta at `indices` (flat; -1 until the mask is chosen)."""

    def __init__(self, weight: torch.Tensor, count: int):
        super().__init__()
        self.shape = weight.shape
        self.values = torch.nn.Parameter(torch.zeros(count, device=weight.device, dtype=weight.dtype))
        self.register_buffer("indices", torch.full((count,), -1, dtype=torch.long, device=weight.device))

    @property
    def chosen(self) -> bool:
        return bool(self.indices[0] >= 0)

    def dense(self) -> torch.Tensor:
        flat = torch.zeros(self.shape.numel(), device=self.values.device, dtype=self.values.dtype)
        return flat.index_add(0, self.indices, self.values).view(self.shape)

    def adjust(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        # The dense delta costs one weight-sized buffer per layer at a time; a sparse matmul would save it but
        # keeps every row's products for backward, which is larger at training batch sizes.
        return output + torch.nn.functional.linear(inputs, self.dense()) if self.chosen else output


def add_deltas(model: torch.nn.Module, density: float) -> list[tuple[torch.nn.Module, SparseDelta]]:
    layers = [layer for _, layer in _partial.block_linears(model) if isinstance(layer, torch.nn.Linear)]
    for layer in layers:
        _partial.attach(layer, NAME, SparseDelta(layer.weight, max(1, math.ceil(density * layer.weight.numel()))))
    model.tunelab_diff_density = density
    return [(layer, getattr(layer, NAME)) for layer in layers]


class MaskChooser:
    """A forward pre-hook on the model: on training forwards that carry labels, adds |dL/dW| of each delta's
    weight into a score until `batches` were seen, then keeps each weight's top entries and removes itself."""

    def __init__(self, model: torch.nn.Module, pairs: list[tuple[torch.nn.Module, SparseDelta]], batches: int):
        self.model, self.pairs, self.batches, self.seen, self.busy = model, pairs, batches, 0, False
        self.scores = [torch.zeros_like(layer.weight) for layer, _ in pairs]
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.busy or not model.training or self.pairs[0][1].chosen:
            return
        if kwargs.get("labels") is None:
            raise ConfigError("diff-pruning chooses its mask from the model's own loss on training batches; this "
                              "task's trainer computes its loss outside the model (no labels in the batch)")
        weights = [layer.weight for layer, _ in self.pairs]
        self.busy = True
        try:
            for weight in weights:
                weight.requires_grad_(True)
            # autograd.grad leaves every .grad untouched: the trainer's own step sees only its own gradients.
            grads = torch.autograd.grad(model(*args, **kwargs).loss, weights, allow_unused=True)
        finally:
            for weight in weights:
                weight.requires_grad_(False)
            self.busy = False
        for score, grad in zip(self.scores, grads):
            if grad is not None:
                score += grad.abs()
        self.seen += 1
        if self.seen >= self.batches:
            self.choose()

    def choose(self) -> None:
        with torch.no_grad():
            for score, (_, delta) in zip(self.scores, self.pairs):
                top = torch.topk(score.flatten(), delta.values.numel()).indices
                delta.indices.copy_(top.sort().values)
        self.scores = []
        self.handle.remove()


class DiffPruning(_partial.PartialMethod):
    name = "diff-pruning"
    description = ("A sparse delta over the frozen weights: the top `density` entries of each block weight by "
                   "gradient magnitude on the first batches train; only those are stored.")
    trains = "a sparse delta (density share of block weights) (+ task heads)"
    default_learning_rate = 1e-3
    sections = ("diff_pruning",)
    mergeable = True

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        settings = config.diff_pruning
        _partial.freeze_all_but_heads(model, spec)
        pairs = add_deltas(model, settings.density)
        if not pairs:
            raise ConfigError(f"diff-pruning: {type(model).__name__} has no linear layers in its blocks")
        MaskChooser(model, pairs, settings.mask_batches)
        _partial.remember_base(model)
        return model

    def settings(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"density": model.tunelab_diff_density}

    def saved_buffers(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if not _partial.attached(model, SparseDelta)[0].chosen:
            raise ConfigError("diff-pruning: the mask was never chosen (no training batch ran); nothing to save")
        return {n: b for n, b in model.named_buffers() if n.endswith(f"{NAME}.indices")}

    def rebuild(self, base: torch.nn.Module, settings: dict[str, Any]) -> None:
        add_deltas(base, settings["density"])

    def info(self, model: torch.nn.Module) -> dict[str, Any]:
        deltas = _partial.attached(model, SparseDelta)
        kept = sum(d.values.numel() for d in deltas)
        covered = sum(d.shape.numel() for d in deltas)
        changed = sum(int((d.values != 0).sum()) for d in deltas)
        total = sum(p.numel() for n, p in model.named_parameters() if NAME not in n)
        return {"delta_entries": kept, "delta_density_of_block_weights": kept / covered,
                "delta_entries_changed": changed, "delta_density_of_model": kept / total}

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            for layer in list(model.modules()):
                if isinstance(getattr(layer, NAME, None), SparseDelta):
                    layer.weight += getattr(layer, NAME).dense()
                    _partial.detach(layer, NAME)
        return model


register_method(DiffPruning())
