"""QLoRA: LoRA adapters over a 4-bit NF4 base (double quantization) through bitsandbytes, on CPU or CUDA.

The adapter trains in full precision; the frozen base is stored in 4 bits. Merging needs a
full-precision base: merging into 4-bit layers would quantize the update away, so `merge` refuses a
quantized model and export loads the adapter onto the fp32 base instead.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.methods.base import register_method
from tunelab.methods.lora import Lora
from tunelab.models.loading import ModelSpec, quantized_layers
from tunelab.settings import Section, register_section


class QloraSettings(Section):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/weight).")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="dtype the 4-bit layers compute in; auto: bf16 on CUDA, fp32 on CPU.")


register_section("qlora", QloraSettings)


class QuantizedSettings(Section):
    paged_optimizer: bool = Field(
        False, description="CUDA only: paged AdamW with 8-bit states (bitsandbytes paged_adamw_8bit), so optimizer "
                           "memory spikes page to the CPU instead of running out of GPU memory.")


register_section("quantized", QuantizedSettings)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Qlora(Lora):
    name = "qlora"
    description = "LoRA over a 4-bit NF4 base with double quantization (bitsandbytes; CPU or CUDA)."
    trains = "low-rank adapters on linear layers of a 4-bit base (+ task heads)"
    default_learning_rate = 1e-3
    sections = ("lora", "qlora", "quantized")
    mergeable = True  # onto a full-precision base
    shares_base = False  # it loads over its own 4-bit base, not the full-precision one the base model serves

    def check_machine(self, config: Any) -> None:
        super().check_machine(config)
        if config.quantized.paged_optimizer and not torch.cuda.is_available():
            raise ConfigError(f"quantized.paged_optimizer=true needs a CUDA GPU (paged memory is CUDA's); this machine "
                              f"has none: set quantized.paged_optimizer=false to train {self.name} on CPU")

    def training_args(self, config: Any) -> dict[str, Any]:
        return {"optim": "paged_adamw_8bit"} if config.quantized.paged_optimizer else {}

    def load_options(self, config: Any, spec: ModelSpec) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        q = config.qlora
        cuda = torch.cuda.is_available()
        dtype = _DTYPES.get(q.compute_dtype, torch.bfloat16 if cuda else torch.float32)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                   bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=dtype,
                                   llm_int8_skip_modules=list(spec.heads) or None)
        return {"quantization_config": quant, "device_map": {"": 0} if cuda else "cpu"}

    def apply(self, model: torch.nn.Module, config: Any, spec: ModelSpec) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.train.gradient_checkpointing))
        return super().apply(model, config, spec)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        if quantized_layers(model):
            raise ConfigError(f"{self.name}: merging into quantized layers would lose the adapter; load the adapter onto "
                              "the full-precision base (method.load on a base loaded without quantization) and "
                              "merge that")
        return super().merge(model)


register_method(Qlora())
