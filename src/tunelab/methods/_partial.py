"""What tunelab's own methods share: finding a transformer's blocks, freezing all but chosen tensors,
saving only the tensors that trained and loading them over a freshly loaded base, small modules
attached to linear layers through forward hooks, and a switched-off view (the trained tensors set back to
their starting values, which for every method here is the base's function exactly).

Used by `freeze`, `bitfit`, `adapter` and `diff-pruning`; a module whose name starts with `_` is not a
method (the registry skips it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError, ModelError
from tunelab.methods.base import Method, head_names
from tunelab.models.loading import LoadRules, ModelSpec

TENSORS = "trained.safetensors"
SETTINGS = "tunelab_method.json"


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks (Llama `model.layers`, BERT `encoder.layer`): the ModuleList holding
    the most parameters, so no architecture needs naming."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no list of transformer blocks (no ModuleList)")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def out_features(module: torch.nn.Module) -> int | None:
    """Output width of a linear layer: torch's Linear, or transformers' Conv1D (GPT-2), else None."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[1])
    return None


def block_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, layer) of every linear layer inside the transformer blocks."""
    stack = blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is stack)
    return [(f"{prefix}.{name}", m) for name, m in stack.named_modules() if out_features(m) is not None]


def freeze_all_but_heads(model: torch.nn.Module, spec: ModelSpec) -> None:
    """Freeze every weight; the task's new heads (a classifier's) always train, as the contract asks."""
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in head_names(model, spec):
            module.requires_grad_(True)


def require_something_trains(model: torch.nn.Module, method: str) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{method}: with these settings nothing in {type(model).__name__} would train")


def trained_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter by name; a shared (tied) tensor appears once, under its first name."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_trained(model: torch.nn.Module, directory: Path, method: str, settings: dict[str, Any],
                 extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write only what trained (plus `extra`, e.g. a sparse delta's indices) and the settings that rebuild it."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {**trained_tensors(model), **(extra or {})}
    save_file({k: v.cpu() for k, v in tensors.items()}, str(directory / TENSORS), metadata={"tunelab_method": method})
    (directory / SETTINGS).write_text(json.dumps({"method": method, **settings}, indent=2) + "\n", encoding="utf-8")


def read_settings(directory: Path, method: str) -> dict[str, Any]:
    path = directory / SETTINGS
    if not path.is_file():
        raise ModelError(f"{path}: missing; this directory was not written by method {method}")
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("method") != method:
        raise ModelError(f'{path}: written by method "{settings.get("method")}", not "{method}"')
    return settings


def load_over(model: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """Copy the saved tensors over the model's own (parameters or buffers of the same name); only they train,
    and their values before the copy are the base for `swapped_to_base`."""
    from safetensors.torch import load_file

    saved = load_file(str(directory / TENSORS))
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    unknown = sorted(set(saved) - set(own))
    if unknown:
        raise ModelError(f"{directory / TENSORS}: tensors {unknown[:3]} are not in {type(model).__name__}; "
                         "was it saved from another base model?")
    model.requires_grad_(False)
    model.tunelab_base_values = {name: own[name].detach().clone() for name in saved
                                 if isinstance(own[name], torch.nn.Parameter)}
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)
            if isinstance(own[name], torch.nn.Parameter) and own[name].is_floating_point():
                own[name].requires_grad_(True)
    return model


def remember_base(model: torch.nn.Module) -> None:
    """Keep the starting values of what will train (small for the methods that call this), for `swapped_to_base`."""
    model.tunelab_base_values = {name: p.detach().clone() for name, p in trained_tensors(model).items()}


@contextmanager
def swapped_to_base(model: torch.nn.Module, method: str) -> Iterator[torch.nn.Module]:
    """The model with its trained tensors set back to their starting values, restored on exit."""
    base = getattr(model, "tunelab_base_values", None)
    if base is None:
        raise ConfigError(f"{method}: this model was not made by {method}.apply or .load")
    params = dict(model.named_parameters())
    tuned = {name: params[name].detach().clone() for name in base}
    try:
        with torch.no_grad():
            for name, value in base.items():
                params[name].copy_(value)
        yield model
    finally:
        with torch.no_grad():
            for name, value in tuned.items():
                params[name].copy_(value)


class Attached(torch.nn.Module):
    """A small module a forward hook applies to a linear layer's output; at its starting values it changes
    nothing, so `swapped_to_base` gives the base's outputs exactly."""

    def adjust(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def attach(layer: torch.nn.Module, name: str, module: Attached) -> None:
    """Register `module` as a child of `layer` (so it moves, trains and saves with the model) and a hook that
    applies it; no library class is changed."""
    layer.add_module(name, module)

    def hook(_layer: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return module.adjust(args[0], output)

    module.tunelab_hook = layer.register_forward_hook(hook)


def detach(layer: torch.nn.Module, name: str) -> None:
    """Remove an attached module and its hook (after its effect was folded into the layer's weights)."""
    getattr(layer, name).tunelab_hook.remove()
    delattr(layer, name)


def attached(model: torch.nn.Module, kind: type[Attached]) -> list[Attached]:
    return [m for m in model.modules() if isinstance(m, kind)]


class PartialMethod(Method):
    """A method that trains some of the model's own (or attached) tensors: it saves only those, loads them
    over a fresh base after rebuilding what `settings` describes, and is switched off by setting them back."""

    def settings(self, model: torch.nn.Module) -> dict[str, Any]:
        """What `rebuild` needs to give a fresh base the trained model's shape (saved beside the tensors)."""
        return {}

    def rebuild(self, base: torch.nn.Module, settings: dict[str, Any]) -> None:
        """Attach to a fresh base what this method added before training (nothing by default)."""

    def saved_buffers(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Tensors that did not train but must be saved beside the trained ones (e.g. a sparse delta's indices)."""
        return {}

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        save_trained(model, directory, self.name, self.settings(model), self.saved_buffers(model))

    def load(self, base: torch.nn.Module, directory: Path, spec: ModelSpec, rules: LoadRules) -> torch.nn.Module:
        self.rebuild(base, read_settings(directory, self.name))
        return load_over(base, directory)

    @contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        with swapped_to_base(model, self.name) as base:
            yield base
