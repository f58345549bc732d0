"""One config on many processes, through the standard engines: torchrun or `accelerate launch` start the
processes; transformers' Trainer runs DDP, FSDP2 (`fully_shard`) or DeepSpeed ZeRO from its own arguments.
tunelab grows no distributed layer: it chooses the engine's settings from a preset (`distributed:` in the
config), writes them as the engines' own files into the run directory, and keeps the run's writers on the
main process.

Every rank computes (validation, evaluation, saving under a sharded engine need every rank's part); only the
main process writes files and emits events (`is_main_process`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import ConfigError
from tunelab.ranks import group_ready, is_main_process, world_size

TIMEOUT = timedelta(hours=2)  # ranks wait while the main process encodes a large training file alone


def start(config: Any) -> None:
    """Check the preset fits this machine, then join the process group before any collective call (broadcasts,
    barriers) when launched on several processes; accelerate chooses the backend (NCCL on GPUs, gloo on CPUs)
    as the Trainer's own setup would."""
    import torch
    from accelerate import PartialState

    get_preset(config.distributed).check_machine()
    if world_size() > 1:
        PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)


def check_same_config(config_yaml: str) -> None:
    """Every rank must hold the same resolved config (epochs=auto and task=auto are resolved on each rank from the
    same files): a difference would train different things under one run's name."""
    import torch.distributed as dist

    if not group_ready():
        return
    mine = hashlib.sha256(config_yaml.encode()).hexdigest()
    seen: list[Any] = [None] * world_size()
    dist.all_gather_object(seen, mine)
    odd = [r for r, digest in enumerate(seen) if digest != seen[0]]
    if odd:
        raise ConfigError(f"rank(s) {', '.join(map(str, odd))} resolved another config than rank 0 (different files "
                          "or settings on their node?); every rank must read the same config and data")


# ---- presets: `distributed:` in the config -> the Trainer's arguments and the engines' files ----


@dataclass(frozen=True)
class Preset:
    """One way to spread a run over processes; `zero_stage` is what is sharded (the ZeRO paper's stages:
    0 nothing, 1 optimizer states, 2 + gradients, 3 + weights), `offload` what waits in host memory."""

    name: str
    description: str
    engine: str
    zero_stage: int = 0
    offload: tuple[str, ...] = ()

    def training_args(self, config: Any) -> dict[str, Any]:
        """transformers' TrainingArguments fields for this preset."""
        return {}

    def check_machine(self) -> None:
        """Refuse, before anything loads, a preset this machine cannot run."""
        import torch

        if self.engine != "ddp" and not torch.cuda.is_available():
            # accelerate turns FSDP and DeepSpeed on for GPU process groups only: on CPUs it would train plain DDP
            # under this preset's name
            raise ConfigError(f"distributed={self.name} needs CUDA GPUs (accelerate runs FSDP and DeepSpeed on GPUs "
                              "only; on CPUs it would silently train plain DDP); this machine has none: use "
                              "distributed=ddp")
        if self.engine == "deepspeed":
            require_deepspeed(self.name)

    def engine_files(self, config: Any, run_dir: Path) -> dict[str, str]:
        """The engine's own config files (name -> text), written into the run directory to see and reuse."""
        return {"accelerate.yaml": _yaml(accelerate_config(self, config, run_dir))}


class DdpPreset(Preset):
    pass


class FsdpPreset(Preset):
    def fsdp_config(self, config: Any) -> dict[str, Any]:
        """FSDP2 (`fully_shard`) per decoder layer: it shards frozen and trainable parameters of one layer
        together (LoRA), with no `use_orig_params` flat-parameter costs. Sharded state dicts go through
        torch.distributed.checkpoint, which reshards when a checkpoint is loaded on another world size."""
        return {"version": 2, "reshard_after_forward": True, "cpu_offload": bool(self.offload),
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "SHARDED_STATE_DICT",
                "activation_checkpointing": config.train.gradient_checkpointing,
                "cpu_ram_efficient_loading": False}

    def training_args(self, config: Any) -> dict[str, Any]:
        # FSDP checkpoints each wrapped layer itself; the Trainer's own flag would all-gather twice in backward
        return {"fsdp": True, "fsdp_config": self.fsdp_config(config), "activation_checkpointing": False}


class DeepSpeedPreset(Preset):
    def deepspeed_config(self, config: Any) -> dict[str, Any]:
        """DeepSpeed's JSON; "auto" values are filled by transformers from the run's own arguments, so the batch,
        accumulation, rate and precision have one source (the tunelab config)."""
        zero: dict[str, Any] = {"stage": self.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
        if self.zero_stage == 3:
            zero.update({"stage3_gather_16bit_weights_on_model_save": True, "reduce_bucket_size": "auto",
                         "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"})
        for part in self.offload:
            zero[f"offload_{part}"] = {"device": "cpu", "pin_memory": True}
        ds: dict[str, Any] = {
            "zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "train_batch_size": "auto"}
        if self.offload:  # offloaded optimizer states are stepped on the CPU by DeepSpeed's own Adam
            ds["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
        return ds

    def training_args(self, config: Any) -> dict[str, Any]:
        return {"deepspeed": self.deepspeed_config(config)}

    def engine_files(self, config: Any, run_dir: Path) -> dict[str, str]:
        return {"deepspeed.json": json.dumps(self.deepspeed_config(config), indent=2) + "\n",
                **super().engine_files(config, run_dir)}


PRESETS: dict[str, Preset] = {p.name: p for p in [
    DdpPreset("ddp", "every process holds the whole model; gradients are averaged (DistributedDataParallel)", "ddp"),
    FsdpPreset("fsdp", "weights, gradients and optimizer states sharded over the processes (FSDP2 fully_shard)",
               "fsdp", 3),
    FsdpPreset("fsdp-offload", "fsdp, with the sharded weights, gradients and optimizer step on the host (CPU)",
               "fsdp", 3, ("param", "optimizer")),
    DeepSpeedPreset("deepspeed-zero2", "DeepSpeed ZeRO stage 2: optimizer states and gradients sharded",
                    "deepspeed", 2),
    DeepSpeedPreset("deepspeed-zero2-offload", "ZeRO-2 with the optimizer states and step on the host (CPU)",
                    "deepspeed", 2, ("optimizer",)),
    DeepSpeedPreset("deepspeed-zero3", "DeepSpeed ZeRO stage 3: weights, gradients and optimizer states sharded",
                    "deepspeed", 3),
    DeepSpeedPreset("deepspeed-zero3-offload", "ZeRO-3 with weights and optimizer states on the host (CPU)",
                    "deepspeed", 3, ("optimizer", "param")),
]}


def get_preset(name: str) -> Preset:
    return PRESETS[name]


def require_deepspeed(preset: str) -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"distributed={preset} needs the deepspeed package: pip install 'tunelab[deepspeed]' "
                          "(or choose distributed=fsdp, which PyTorch itself runs)")


def accelerate_config(preset: Preset, config: Any, run_dir: Path) -> dict[str, Any]:
    """`accelerate launch --config_file` for this preset on this run's machines (as launched now)."""
    import torch

    nodes = max(1, world_size() // int(os.environ.get("LOCAL_WORLD_SIZE", world_size())))
    from tunelab.precision import resolve

    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": nodes,
        "num_processes": world_size(), "machine_rank": 0, "main_process_ip": os.environ.get("MASTER_ADDR"),
        "main_process_port": int(os.environ.get("MASTER_PORT", "29500")),
        "mixed_precision": {"fp32": "no"}.get(resolve(config.train.precision), resolve(config.train.precision)),
        "use_cpu": not torch.cuda.is_available(), "rdzv_backend": "static", "same_network": True}
    if isinstance(preset, FsdpPreset):
        fsdp = preset.fsdp_config(config)
        out.update(distributed_type="FSDP", fsdp_config={
            "fsdp_version": 2, "fsdp_reshard_after_forward": fsdp["reshard_after_forward"],
            "fsdp_offload_params": fsdp["cpu_offload"], "fsdp_auto_wrap_policy": fsdp["auto_wrap_policy"],
            "fsdp_state_dict_type": fsdp["state_dict_type"], "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": fsdp["activation_checkpointing"]})
    elif isinstance(preset, DeepSpeedPreset):
        out.update(distributed_type="DEEPSPEED", deepspeed_config={
            "deepspeed_config_file": str((run_dir / "distributed" / "deepspeed.json").resolve()),
            "zero3_init_flag": preset.zero_stage == 3})
    return out


def _yaml(value: dict[str, Any]) -> str:
    return yaml.safe_dump(value, sort_keys=False)


def write_engine_files(config: Any, run_dir: Path) -> list[Path]:
    """The preset as the engines' own files under run_dir/distributed/ (main process only), for a run on several
    processes or with a preset other than plain DDP."""
    from tunelab.rundir import write_atomic

    written: list[Path] = []
    if world_size() == 1 and config.distributed == "ddp":
        return written
    for name, text in get_preset(config.distributed).engine_files(config, run_dir).items():
        path = run_dir / "distributed" / name
        if is_main_process():
            write_atomic(path, text)
        written.append(path)
    return written


def common_training_args(config: Any) -> dict[str, Any]:
    """TrainingArguments every run gets, whatever its world size, then the preset's own.

    Gradient checkpointing re-runs each layer's forward in backward; with the reentrant implementation and
    frozen inputs (LoRA) no gradient reaches the adapters, and DDP's `find_unused_parameters` then marks
    parameters ready twice. Non-reentrant checkpointing and a static set of used parameters avoid both
    (and spare DDP a graph walk every step).
    """
    return {"activation_checkpointing_kwargs": {"use_reentrant": False}, "ddp_find_unused_parameters": False,
            "ddp_timeout": int(TIMEOUT.total_seconds()), **get_preset(config.distributed).training_args(config)}


# ---- the global batch across a change of world size ----


def layout(args: Any) -> dict[str, int]:
    """How a step's examples were spread: what a checkpoint records so that another world size can resume it."""
    return {"processes": int(args.world_size), "batch_size": int(args.per_device_train_batch_size),
            "grad_accum": int(args.gradient_accumulation_steps)}


def split_global_batch(total: int, processes: int, batch_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation) with micro x accumulation x processes == total: the largest micro-batch up
    to `batch_size` that divides the share of each process."""
    if total % processes:
        raise ConfigError(f"the checkpoint's global batch of {total} examples cannot be split evenly over "
                          f"{processes} processes; resume on a number of processes that divides {total}")
    share = total // processes
    micro = max(m for m in range(1, min(batch_size, share) + 1) if share % m == 0)
    return micro, share // micro


def adjust_to_world(config: Any, saved: dict[str, Any] | None, processes: int) -> tuple[Any, str | None]:
    """The config to resume a checkpoint with on `processes` processes: the same global batch (per-device batch x
    processes x accumulation) as the checkpoint was trained with, and the sentence that says how it was kept."""
    if not saved or "processes" not in saved or saved["processes"] == processes:
        return config, None
    total = saved["processes"] * saved["batch_size"] * saved["grad_accum"]
    micro, accum = split_global_batch(total, processes, saved["batch_size"])
    message = (f"the checkpoint was written by {saved['processes']} process(es) x batch {saved['batch_size']} x "
               f"accumulation {saved['grad_accum']}; resuming on {processes} process(es) x batch {micro} x "
               f"accumulation {accum}: the same global batch of {total}")
    train = config.train.model_copy(update={"batch_size": micro, "grad_accum": accum})
    return config.model_copy(update={"train": train}), message


def weights_agree(model: Any) -> bool | None:
    """Whether every rank ended with the same trainable weights, to the bit (None: one process, or an engine that
    shards the weights). Replicas that differ mean gradients were not synced: each rank trained on its own."""
    import torch
    import torch.distributed as dist

    if not group_ready() or any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in model.parameters()):
        return None
    digest = hashlib.sha256()
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    seen: list[Any] = [None] * world_size()
    dist.all_gather_object(seen, digest.hexdigest())
    return len(set(seen)) == 1


def describe(config: Any, model: Any) -> dict[str, Any]:
    """summary.json's `distributed` entry (every rank calls it: it compares the ranks' weights)."""
    return {"preset": config.distributed, "processes": world_size(), "weights_agree": weights_agree(model)}
