"""`tunelab plan CONFIG --gpus N --gpu-memory 80GB`: will this run fit, per device, before anyone rents machines?

The parameters are counted, not guessed: the config's model is built on the meta device (no weights read) and
its method applied, so total, trainable and per-layer counts are exact for any architecture transformers knows.
Memory per device is then, with P parameters, T of them trained, N devices, ZeRO stage z of the preset:

    weights     w_t T + w_f (P - T)         / N if z = 3 (FSDP, ZeRO-3)
    gradients   g T                         / N if z >= 2
    optimizer   o T                         / N if z >= 1     (Adam: two moments, plus fp32 master weights
                                                               when the engine keeps 16-bit weights)
    gathered    root unit + 2 x largest layer, in the compute dtype (z = 3: the layer being computed and the
                one prefetched; the root holds embeddings and head for the whole step)
    activations layers x b x s x (30h + 4h_kv + 8i)      bf16 autocast, no checkpointing (see layer_bytes; fp32:
                                                      32h + 8h_kv + 16i); flash/SDPA attention keeps no s x s
                layers x b x s x 4h + one layer's         with checkpointing
                b x s x (30h + 4h_kv + 8i)
    logits      2 x 4 x b x s x V           fp32 logits and their gradient (s: every token; the supervised head
                                            only meets the supervised ones, so this is the worst case)
    overhead    1.5 GiB                     CUDA context, NCCL buffers, allocator slack (assumed)

Offload moves the optimizer (and, with `param`, the weights) to host memory: they are counted per node.
Byte sizes: the Trainer and FSDP keep fp32 weights and autocast (w=4, g=4, o=8: 16 bytes per trained
parameter); DeepSpeed in bf16 keeps bf16 weights and gradients with an fp32 master copy (w=2, g=2, o=12: the
ZeRO paper's 16 bytes, K=12). A method that quantizes the frozen base stores it in 0.5 (4-bit) or 1 byte.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.errors import ConfigError

GiB = 1024 ** 3
OVERHEAD = int(1.5 * GiB)

# Architectures to plan for without their weights on disk (public model cards' config.json numbers).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "tie_word_embeddings": False},
    "llama-3-70b": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                    "tie_word_embeddings": False},
}


@dataclass
class Counts:
    """What the planner needs of a model: parameters (total, trained, largest layer, outside the layers) and shape."""

    total: int
    trainable: int
    largest_layer: int
    root: int
    layers: int
    hidden: int
    kv_hidden: int
    intermediate: int
    vocab: int
    frozen_bytes: float = 0.0  # bytes per frozen parameter when the method quantizes the base (0: as the engine)


@dataclass
class Plan:
    preset: str
    devices: int
    gpu_bytes: int
    per_device: dict[str, int]
    host_per_node: int
    formulas: dict[str, str]
    counts: dict[str, Any]
    fits: bool
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_device.values())


def parse_bytes(text: str) -> int:
    """"80GB", "80GiB", "24g", "1.5TB" -> bytes (GB and GiB both read as 2^30: GPU makers' "80GB" is 80 GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise ConfigError(f'--gpu-memory: expected a size such as 80GB or 24GiB, got "{text}"')
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def model_config(config: Any, shape: str | None) -> Any:
    from transformers import AutoConfig

    if shape is not None:
        if shape not in SHAPES:
            raise ConfigError(f'--shape: expected one of {"|".join(SHAPES)}, got "{shape}"')
        numbers = dict(SHAPES[shape])
        return AutoConfig.for_model(numbers.pop("model_type"), **numbers)
    from tunelab.models import resolve_model

    return AutoConfig.from_pretrained(resolve_model(config.model), trust_remote_code=config.trust_remote_code)


def count(config: Any, shape: str | None = None) -> Counts:
    """Exact parameter counts of the config's model with its method applied, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.methods import count_params, get_method
    from tunelab.models.loading import ModelSpec

    arch = model_config(config, shape)
    method = get_method(config.method)
    # torch's meta device, not accelerate's init_empty_weights: under the latter tied embeddings stay two tensors
    with torch.device("meta"):
        model = method.apply(AutoModelForCausalLM.from_config(arch), config, ModelSpec("causal_lm"))
    trainable, total = count_params(model)
    layer_params = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)]
    heads = arch.num_attention_heads
    head_dim = getattr(arch, "head_dim", None) or arch.hidden_size // heads
    return Counts(total, trainable, max(layer_params), total - sum(layer_params), arch.num_hidden_layers,
                  arch.hidden_size, head_dim * getattr(arch, "num_key_value_heads", heads), arch.intermediate_size,
                  arch.vocab_size, frozen_bytes(method.load_options(config, ModelSpec("causal_lm"))))


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks FSDP and ZeRO-3 gather one at a time (the model's `_no_split_modules` classes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def frozen_bytes(load_options: dict[str, Any]) -> float:
    quant = load_options.get("quantization_config")
    if quant is None:
        return 0.0
    return 0.5 if getattr(quant, "load_in_4bit", False) else 1.0 if getattr(quant, "load_in_8bit", False) else 0.0


def engine_bytes(engine: str, compute: int) -> tuple[int, int, int]:
    """(weight, gradient, optimizer) bytes per trained parameter on this engine (see the module docstring)."""
    if engine == "deepspeed" and compute == 2:
        return 2, 2, 12
    return 4, 4, 8


def layer_bytes(c: Counts, compute: int) -> tuple[int, str]:
    """Bytes one decoder layer keeps for backward per token (counted from what autograd saves, fp32 weights):
    under bf16 autocast each RMSNorm keeps its fp32 input and output (2 x 8h), the five matmuls over the hidden
    state each keep their own bf16 cast of it (10h), attention keeps q, k, v and its output (4h + 4h_kv), the
    MLP gate, up, activation and product (8i); in fp32 each of those is kept once, in 4 bytes."""
    if compute == 2:
        return 30 * c.hidden + 4 * c.kv_hidden + 8 * c.intermediate, "(30h + 4h_kv + 8i)"
    return 32 * c.hidden + 8 * c.kv_hidden + 16 * c.intermediate, "(32h + 8h_kv + 16i)"


def activation_bytes(c: Counts, tokens: int, compute: int, checkpointing: bool) -> tuple[int, str]:
    per_layer, shown = layer_bytes(c, compute)
    if not checkpointing:
        return c.layers * tokens * per_layer, f"layers x b x s x {shown}"
    # checkpointed: each layer's fp32 input (the residual stream), and one layer recomputed at a time
    return c.layers * tokens * 4 * c.hidden + tokens * per_layer, f"layers x b x s x 4h + b x s x {shown}"


def plan(config: Any, devices: int, gpu_bytes: int, per_node: int | None = None, shape: str | None = None,
         counts: Counts | None = None) -> Plan:
    """The memory of one device (and the host memory of one node) for this config on `devices` devices."""
    from tunelab.tasks import TASKS
    from tunelab.distributed import get_preset

    if devices < 1:
        raise ConfigError(f"--gpus: expected at least 1, got {devices}")
    c = counts or count(config, shape)
    preset = get_preset(config.distributed)
    z = preset.zero_stage
    compute = 4 if config.train.precision == "fp32" else 2  # auto: bf16 on the GPUs planned for
    w, g, o = engine_bytes(preset.engine, compute)
    task = TASKS.get(config.task)
    paired = task is not None and "preference" in task.formats  # chosen and rejected go through together
    tokens = config.train.batch_size * config.train.max_length * (2 if paired else 1)
    frozen = c.frozen_bytes or (w if preset.engine == "deepspeed" else 4)
    weights = (w * c.trainable + frozen * (c.total - c.trainable)) / (devices if z == 3 else 1)
    grads = g * c.trainable / (devices if z >= 2 else 1)
    optim = o * c.trainable / (devices if z >= 1 else 1)
    gathered = (c.root + 2 * c.largest_layer) * compute if z == 3 else 0
    acts, act_formula = activation_bytes(c, tokens, compute, config.train.gradient_checkpointing)
    logits = 2 * 4 * tokens * c.vocab
    host = 0.0
    if "optimizer" in preset.offload:
        host, optim = host + optim, 0
    if "param" in preset.offload:
        host, weights = host + weights + grads, 0
        grads = 0
    part = {"weights": weights, "gradients": grads, "optimizer": optim, "gathered layers": gathered,
            "activations": acts, "logits (fp32)": logits, "overhead": OVERHEAD}
    formulas = {
        "weights": f"{w} x T + {frozen:g} x (P - T)" + (" / N" if z == 3 else ""),
        "gradients": f"{g} x T" + (" / N" if z >= 2 else ""),
        "optimizer": f"{o} x T" + (" / N" if z >= 1 else "") + (" (on the host)" if "optimizer" in preset.offload
                                                                 else ""),
        "gathered layers": "(root + 2 x largest layer) x c" if z == 3 else "0 (weights not sharded)",
        "activations": act_formula + (" (chosen and rejected: b doubled)" if paired else ""),
        "logits (fp32)": "2 x 4 x b x s x V", "overhead": "1.5 GiB assumed"}
    if getattr(task, "reference_model", False):
        part["reference model"], formulas["reference model"] = 0, \
            "0: the base with the adapter switched off is the reference (no second copy)"
    per_device = {k: int(v) for k, v in part.items()}
    fits = sum(per_device.values()) <= gpu_bytes
    sharded = sum(part[k] for k, stage in (("weights", 3), ("gradients", 2), ("optimizer", 1)) if z >= stage)
    tips = advice(config, per_device, fits, z)
    if not fits and sharded:  # what shrinks with more devices: how many would it take?
        fixed = sum(per_device.values()) - int(sharded)
        need = -(-int(sharded * devices) // (gpu_bytes - fixed)) if gpu_bytes > fixed else None
        tips.append(f"{need} GPUs with this preset and settings" if need else
                    "no number of GPUs: what is not sharded alone is over the GPU's memory")
    return Plan(config.distributed, devices, gpu_bytes, per_device, int(host * min(per_node or devices, devices)),
                formulas, {**asdict(c), "tokens_per_step_per_device": tokens, "compute_bytes": compute},
                fits, tips)


def advice(config: Any, part: dict[str, int], fits: bool, stage: int) -> list[str]:
    if fits:
        return []
    tips = []
    largest = max(part, key=part.get)
    if largest == "activations" and not config.train.gradient_checkpointing:
        tips.append("train.gradient_checkpointing=true keeps one layer's activations instead of all of them")
    if largest in ("activations", "logits (fp32)") and config.train.batch_size > 1:
        tips.append("a smaller train.batch_size with a larger train.grad_accum keeps the global batch")
    if largest in ("weights", "optimizer", "gradients"):
        tips.append("an -offload preset" if stage == 3 else "a preset that shards more (fsdp, deepspeed-zero3)")
    return tips


def render(p: Plan) -> str:
    width = max(len(k) for k in p.per_device)
    c = p.counts
    lines = [f"{c['total']:,} parameters, {c['trainable']:,} trained; preset {p.preset} on {p.devices} GPU(s); "
             f"b x s = {c['tokens_per_step_per_device']:,} tokens per device and micro-batch",
             "", f"{'per device':<{width}}  {'GiB':>8}  formula"]
    for name, value in p.per_device.items():
        lines.append(f"{name:<{width}}  {value / GiB:>8.2f}  {p.formulas[name]}")
    lines.append(f"{'total':<{width}}  {p.total / GiB:>8.2f}  of {p.gpu_bytes / GiB:.0f} GiB")
    if p.host_per_node:
        lines.append(f"host memory for offload: {p.host_per_node / GiB:.1f} GiB per node")
    verdict = f"fits, {(p.gpu_bytes - p.total) / GiB:.1f} GiB to spare" if p.fits else \
        f"does NOT fit: {(p.total - p.gpu_bytes) / GiB:.1f} GiB over"
    lines += ["", verdict, *[f"  try: {tip}" for tip in p.advice]]
    return "\n".join(lines)


def add_plan_command(sub: Any) -> None:
    cmd = sub.add_parser("plan", help="will a run fit? memory per GPU by preset, before renting machines",
                         description="Count the config's model (built on the meta device, no weights read) and "
                                     "give its memory per GPU: weights, gradients, optimizer states, gathered "
                                     "layers, activations, logits; the formula of each (docs/scale.md).")
    cmd.add_argument("config", nargs="?", help="YAML config file")
    cmd.add_argument("overrides", nargs="*", help="key=value settings (e.g. distributed=fsdp)")
    cmd.add_argument("--gpus", type=int, required=True, help="GPUs in all, every node together")
    cmd.add_argument("--gpu-memory", required=True, help="memory of one GPU, e.g. 80GB")
    cmd.add_argument("--gpus-per-node", type=int, help="for the host memory of offload (default: all on one node)")
    cmd.add_argument("--shape", help=f"plan for an architecture without its weights: {', '.join(SHAPES)}")
    cmd.add_argument("--json", action="store_true", help="the plan as JSON")
    cmd.set_defaults(handler=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from tunelab.config import load_raw, validate_config

    path, overrides = args.config, list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):  # only key=value settings
        path, overrides = None, [path, *overrides]
    raw = load_raw(path, overrides)
    raw.setdefault("data", {}).setdefault("train", "-")  # planning reads no data
    result = plan(validate_config(raw), args.gpus, parse_bytes(args.gpu_memory), args.gpus_per_node, args.shape)
    print(json.dumps(asdict(result), indent=2) if args.json else render(result), file=sys.stdout)
    return 0 if result.fits else 1
