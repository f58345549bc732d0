"""LoRA-int8: LoRA adapters over an 8-bit (LLM.int8) base through bitsandbytes, on CPU or CUDA.

Everything but the load is QLoRA's: the kbit training preparation, the paged-optimizer option and the
refusal to merge into quantized layers (merge onto the full-precision base instead).
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.methods.base import register_method
from tunelab.methods.qlora import Qlora
from tunelab.models.loading import ModelSpec


class LoraInt8(Qlora):
    name = "lora-int8"
    description = "LoRA over an 8-bit LLM.int8 base (bitsandbytes; CPU or CUDA)."
    trains = "low-rank adapters on linear layers of an 8-bit base (+ task heads)"
    default_learning_rate = 1e-3
    sections = ("lora", "quantized")

    def load_options(self, config: Any, spec: ModelSpec) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        # New heads stay full precision: they train, and an 8-bit layer cannot.
        quant = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(spec.heads) or None)
        return {"quantization_config": quant, "device_map": {"": 0} if torch.cuda.is_available() else "cpu"}


register_method(LoraInt8())
