"""The run's numeric precision: what `train.precision` resolves to on this machine, and the autocast that
every scoring pass runs under, so the model is measured the same way before, during and after training.

Weights stay fp32 (models.loading); bf16 and fp16 are autocast, in training (the Trainer's) and in scoring
(`autocast` here). Evaluating in the training precision keeps a bf16 run fast where bf16 is native, and
keeps its zero-shot, validation and tuned numbers comparable with each other.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch

from tunelab.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:  # not Linux: no evidence of native bf16, so stay in fp32
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve(precision: str) -> str:
    """fp32, bf16 or fp16. auto: bf16 where the hardware does bf16 natively (CUDA that has it, a CPU with
    AVX512-BF16 or AMX), fp32 elsewhere: a CPU without them emulates bf16 and is slower than in fp32.
    fp16 needs a GPU: accelerate trains a CPU model in fp32 when asked for fp16, which would then be
    scored in another precision than it trained in."""
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (fp16 mixed precision does not run on a CPU); "
                          "use train.precision=bf16 or fp32 here")
    if precision != "auto":
        return precision
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    return "bf16" if native else "fp32"


def autocast(precision: str, device_type: str | None = None) -> AbstractContextManager:
    """The autocast a model is scored under for a run of this precision (disabled for fp32)."""
    resolved = resolve(precision)
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.autocast(device_type, dtype=DTYPES[resolved], enabled=resolved != "fp32")


def active_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype autocast computes in on this device right now, else `default` (also on a device type autocast
    does not know, where nothing is cast)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return default
    return torch.get_autocast_dtype(device_type) if enabled else default
