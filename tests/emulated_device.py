"""An accelerator emulated on the CPU, to run scoring code as if the model lived on a GPU.

The CUDA tests skip on a machine without one, so a tensor built on the CPU and mixed with the model's
tensors (the held-out loss once did: `torch.zeros(n).index_add_(0, rows_on_gpu, ...)`) passed every test
here and crashed on the first GPU. Inside `EmulatedDevice`, the model's parameters and buffers, and every
tensor made from them or created or moved with `device=` the emulated device, are "on the device": their
`.device` reads `meta`, though their values live on the CPU and compute normally. Any other tensor is on
the host. An operation that mixes the two raises `DeviceMismatch`, as CUDA would, naming the operation.
Reading values back (`.tolist()`, `.item()`, `.cpu()`) is allowed, as on a GPU; `.numpy()` is not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

DEVICE = torch.device("meta")  # what placed tensors report; a real `meta` tensor is never made
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.eye, torch.linspace, torch.zeros_like, torch.ones_like,
             torch.full_like, torch.empty_like}
TO_HOST = ("cpu", "tolist", "item")


class DeviceMismatch(RuntimeError):
    pass


def _is_device(value: Any) -> bool:
    return isinstance(value, (torch.device, str)) and torch.device(value) == DEVICE


class EmulatedDevice(TorchFunctionMode):
    """`with EmulatedDevice() as device: device.place(model); ...`: the model's tensors are then on the device."""

    def __init__(self):
        super().__init__()
        self.placed = WeakIdKeyDictionary()

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        for tensor in [*model.parameters(), *model.buffers()]:
            self.placed[tensor] = True
        return model

    def on_device(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value in self.placed

    def _mark(self, out: Any) -> Any:
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.placed[tensor] = True
        return out

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        if func == torch.Tensor.device.__get__:
            return DEVICE if self.on_device(args[0]) else func(*args)
        if func in FACTORIES or "device" in kwargs:
            return self._create(func, args, kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cuda):
            return self._move(func, args, kwargs)
        if name in TO_HOST:
            out = func(*args, **kwargs)
            return out.clone() if isinstance(out, torch.Tensor) and self.on_device(args[0]) else out
        if name == "numpy" and self.on_device(args[0]):
            raise DeviceMismatch("numpy(): a device tensor must be moved to the host first (.cpu())")
        return self._compute(func, name, args, kwargs)

    def _create(self, func: Any, args: tuple, kwargs: dict) -> Any:
        wanted = kwargs.get("device")
        like = args[0] if func in (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like) else None
        to_device = _is_device(wanted) if wanted is not None else self.on_device(like)
        if wanted is not None and to_device:
            kwargs = {**kwargs, "device": "cpu"}
        out = func(*args, **kwargs)
        return self._mark(out) if to_device else out

    def _move(self, func: Any, args: tuple, kwargs: dict) -> Any:
        targets = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, (torch.device, str))]
        if func is torch.Tensor.cuda or (targets and _is_device(targets[0])):
            rest = [a for a in args[1:] if not isinstance(a, (torch.device, str))]
            options = {k: v for k, v in kwargs.items() if k not in ("device", "non_blocking")}
            return self._mark(args[0].to(*rest, **options).clone())
        if targets and torch.device(targets[0]).type == "cpu":
            out = func(*args, **kwargs)
            return out.clone() if self.on_device(args[0]) else out
        return self._compute(func, "to", args, kwargs)

    def _compute(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        # CUDA accepts host index tensors and host 0-dim tensors beside device tensors.
        checked = args[:1] if name in ("__getitem__", "__setitem__") else (args, kwargs)
        tensors = [t for t in tree_flatten(checked)[0] if isinstance(t, torch.Tensor) and t.dim() > 0]
        where = {self.on_device(t) for t in tensors}
        if len(where) > 1:
            shapes = ", ".join(f"{tuple(t.shape)} on the {'device' if self.on_device(t) else 'host'}" for t in tensors)
            raise DeviceMismatch(f"{name}: tensors on different devices ({shapes})")
        out = func(*args, **kwargs)
        every = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        return self._mark(out) if True in where or (not where and any(map(self.on_device, every))) else out
