"""The one place tunelab calls `from_pretrained`: every model kind, every caller, the same safety rules.

Rules: weights come from safetensors unless the user allowed pickle (and then only through torch's
weights_only loader); a model's own code runs only with trust_remote_code; the model comes back in
fp32 on the run's device unless a method asked for a quantized load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ModelError
from tunelab.models.safety import check_weights, loading_kwargs, plain_tensors_only

# kind -> (transformers auto class, PEFT task type)
KINDS: dict[str, tuple[str, str]] = {
    "causal_lm": ("AutoModelForCausalLM", "CAUSAL_LM"),
    "sequence_classifier": ("AutoModelForSequenceClassification", "SEQ_CLS"),
    "token_classifier": ("AutoModelForTokenClassification", "TOKEN_CLS"),
    "embedding": ("AutoModel", "FEATURE_EXTRACTION"),
}


@dataclass
class ModelSpec:
    """What a task needs loaded: the model kind, its from_pretrained options, and the new heads that
    every method must leave trainable and save with the tuned weights."""

    kind: str = "causal_lm"
    options: dict[str, Any] = field(default_factory=dict)
    heads: tuple[str, ...] = ()

    @property
    def peft_task_type(self) -> str:
        return KINDS[self.kind][1]


@dataclass(frozen=True)
class LoadRules:
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @classmethod
    def of(cls, config: Any) -> LoadRules:
        return cls(bool(config.allow_pickle), bool(config.trust_remote_code))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: Path, rules: LoadRules = LoadRules()) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=rules.trust_remote_code, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, spec: ModelSpec = ModelSpec(), rules: LoadRules = LoadRules(),
               **method_options: Any) -> torch.nn.Module:
    """A model of the spec's kind from a local checkpoint dir; `method_options` (e.g. a
    quantization_config) come from the method's load needs and override the defaults."""
    import transformers

    if spec.kind not in KINDS:
        raise ModelError(f'unknown model kind "{spec.kind}"; expected one of {", ".join(KINDS)}')
    check_weights(path, rules.allow_pickle)
    auto = getattr(transformers, KINDS[spec.kind][0])
    options = {"dtype": torch.float32, **spec.options, **method_options}
    placed = "device_map" in options or "quantization_config" in options
    with plain_tensors_only(path):
        try:
            model = auto.from_pretrained(path, trust_remote_code=rules.trust_remote_code, local_files_only=True,
                                         **loading_kwargs(rules.allow_pickle), **options)
        except ValueError as err:
            if "Unrecognized configuration class" not in str(err):
                raise
            raise ModelError(f"{path}: this model has no {spec.kind.replace('_', ' ')} form "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    if "quantization_config" in options:
        keep_gradients_flowing(model)
    return model if placed else model.to(device())


def full_precision(options: dict[str, Any]) -> dict[str, Any]:
    """A method's load options without the quantized placement: what a merge or an export loads. Options that
    shape the model (bitfit's bias slots) stay."""
    return {k: v for k, v in options.items() if k not in ("quantization_config", "device_map")}


def quantized_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """bitsandbytes' 4-bit and 8-bit linear layers."""
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def keep_gradients_flowing(model: torch.nn.Module) -> None:
    """On avx512_bf16 CPUs, Linear4bit repacks its weight on the first eval-mode no-grad forward and
    gradients stop flowing afterwards, silently (bitsandbytes 0.50.2): keep the unpacked path from the
    moment of loading, since a run evaluates the base before the method is applied."""
    import bitsandbytes as bnb

    for layer in quantized_layers(model):
        if isinstance(layer, bnb.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu = False


def load_pair(path: Path, spec: ModelSpec, rules: LoadRules, **method_options: Any) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and model; a classifier learns the tokenizer's pad id so it can find each row's end."""
    tokenizer = load_tokenizer(path, rules)
    model = load_model(path, spec, rules, **method_options)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
