"""The method contract and its registry.

A method is one module under `methods/`: its settings section, default learning rate, what it needs at
load time, how it makes a model of the task's kind trainable, how it saves, loads and merges, and
(where it can) a view of the model with the method switched off. Nothing outside this package
branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.models.loading import KINDS, ModelSpec
from tunelab.settings import require_sections


class Method:
    name: str = ""
    description: str = ""
    trains: str = ""                # what trains, in a user's words (`tunelab methods`)
    default_learning_rate: float = 1e-4
    sections: tuple[str, ...] = ()  # config sections this method reads (valid only with it)
    mergeable: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    kinds: tuple[str, ...] = tuple(KINDS)  # model kinds (models.loading.KINDS) this method can train
    peft_model: bool = False        # apply() returns a PEFT PeftModel: library trainers (TRL) switch its adapter off
    # what `save` wrote is a PEFT adapter that loads onto the plain full-precision base (`load_adapter`) and joins
    # PEFT's mixed-adapter batches: `tunelab serve` batches it with other adapters of that base and the base itself
    shares_base: bool = False

    def check_machine(self, config: Any) -> None:
        """Refuse, before any model loads, a method or option this machine cannot run (e.g. CUDA-only on CPU).
        Overrides call super() and add their own options' needs."""
        if "cpu" not in self.devices and not torch.cuda.is_available():
            raise ConfigError(f'method "{self.name}" needs {" or ".join(self.devices)}; this machine has no GPU '
                              f'(methods that run on CPU: see `tunelab methods`)')

    def check_model(self, model: torch.nn.Module, spec: ModelSpec) -> None:
        """Refuse, right after loading, a model this method cannot train (a kind it does not declare)."""
        if spec.kind not in self.kinds:
            raise ConfigError(f'method "{self.name}" cannot train a {spec.kind.replace("_", " ")} model; it trains '
                              f'{", ".join(k.replace("_", " ") for k in self.kinds)} models')

    def training_args(self, config: Any) -> dict[str, Any]:
        """TrainingArguments fields this method sets (e.g. its optimizer), added to every task's trainer."""
        return {}

    def load_options(self, config: Any, spec: ModelSpec) -> dict[str, Any]:
        """Extra from_pretrained options this method needs (e.g. a quantization_config that leaves the
        spec's new heads in full precision)."""
        return {}

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        """Make the model trainable under this method (the spec's heads train too); return the model to train."""
        raise NotImplementedError

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write what this method trained (safetensors) so that `load` can rebuild the tuned model."""
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, base: torch.nn.Module, directory: Path, spec: ModelSpec, rules: Any) -> torch.nn.Module:
        """Rebuild the tuned model from a base model (as `load_options` asked) and what `save` wrote."""
        raise NotImplementedError

    def info(self, model: torch.nn.Module) -> dict[str, Any]:
        """What this method chose while training that a reader of the run needs (e.g. a mask's achieved
        density); recorded as `method_info` in summary.json."""
        return {}

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """A plain transformers model computing what the tuned model computes."""
        raise ConfigError(f'method "{self.name}" cannot merge into the base weights; keep it as an adapter')

    @contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model with this method switched off (the base), e.g. as a preference task's reference."""
        raise ConfigError(f'method "{self.name}" has no switched-off view of the base model; use a method with '
                          "an adapter (e.g. lora)")
        yield model  # pragma: no cover


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    require_sections(f'method "{method.name}"', method.sections)
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    return METHODS[name]


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once (tied embeddings are one tensor).

    A 4-bit weight stores two values per byte: it counts as the values it holds, not its bytes."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = _values(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _values(param: torch.nn.Parameter) -> int:
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def head_names(model: torch.nn.Module, spec: ModelSpec) -> list[str]:
    """The spec's heads that this model has (e.g. `score` on Llama, `classifier` on BERT)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [head for head in spec.heads if head in names]
