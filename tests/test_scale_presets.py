"""`distributed:` presets as the engines' own settings and files, the launcher's command lines, the global batch
kept across a change of world size, and the collective helpers on two gloo processes (no model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.two_ranks import run_two_ranks
from tunelab import distributed, ranks
from tunelab.errors import ConfigError
from tunelab.launch import Launch, command
from tunelab.distributed import PRESETS, adjust_to_world, get_preset, split_global_batch


def engine_files(tiny_config, tmp_path, preset: str, *overrides: str) -> dict:
    config = tiny_config(f"distributed={preset}", *overrides)
    files = get_preset(preset).engine_files(config, tmp_path)
    return {name: (json.loads(text) if name.endswith(".json") else yaml.safe_load(text)) for name, text in files.items()}


def test_fsdp_presets_are_fsdp2_with_sharded_checkpoints(tiny_config, tmp_path):
    for name, offload in (("fsdp", False), ("fsdp-offload", True)):
        acc = engine_files(tiny_config, tmp_path, name, "train.gradient_checkpointing=true")["accelerate.yaml"]
        assert acc["distributed_type"] == "FSDP"
        fsdp = acc["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert fsdp["fsdp_offload_params"] is offload and fsdp["fsdp_activation_checkpointing"] is True
        args = get_preset(name).training_args(tiny_config(f"distributed={name}", "train.gradient_checkpointing=true"))
        assert args["fsdp"] is True and args["fsdp_config"]["version"] == 2
        # FSDP checkpoints the layers it wraps; the Trainer's own flag would gather the weights twice
        assert args["fsdp_config"]["activation_checkpointing"] is True and args["activation_checkpointing"] is False


@pytest.mark.parametrize("name, stage, offload", [
    ("deepspeed-zero2", 2, set()), ("deepspeed-zero2-offload", 2, {"optimizer"}),
    ("deepspeed-zero3", 3, set()), ("deepspeed-zero3-offload", 3, {"optimizer", "param"})])
def test_deepspeed_presets_write_a_config_deepspeed_reads(tiny_config, tmp_path, name, stage, offload):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    files = engine_files(tiny_config, tmp_path, name)
    ds = files["deepspeed.json"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert {k.removeprefix("offload_") for k in zero if k.startswith("offload_")} == offload
    assert all(zero[f"offload_{part}"]["device"] == "cpu" for part in offload)
    parsed = HfDeepSpeedConfig(ds)  # accelerate's reading of the same file
    assert parsed.is_zero3() == (stage == 3) and parsed.is_offload() == bool(offload)
    # batch, accumulation, rate and precision come from the tunelab config through the Trainer ("auto")
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    assert ("optimizer" in ds) == bool(offload)  # an offloaded optimizer is stepped by DeepSpeed's CPU Adam
    acc = files["accelerate.yaml"]
    assert acc["distributed_type"] == "DEEPSPEED"
    assert acc["deepspeed_config"]["deepspeed_config_file"] == str((tmp_path / "distributed" / "deepspeed.json").resolve())
    assert acc["deepspeed_config"]["zero3_init_flag"] == (stage == 3)


def test_every_run_gets_the_ddp_safe_gradient_checkpointing(tiny_config):
    from tunelab.train.trainer import common_args

    args = common_args(tiny_config("train.gradient_checkpointing=true", "train.epochs=1"), tiny_config().output_dir)
    # reentrant checkpointing gives LoRA no gradient and, with find_unused_parameters, marks parameters ready twice
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["ddp_find_unused_parameters"] is False and args["activation_checkpointing"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("name", [n for n in PRESETS if n != "ddp"])
def test_sharding_presets_are_refused_on_a_cpu_machine_before_anything_loads(tiny_config, name):
    from tunelab.train.run import run

    with pytest.raises(ConfigError, match=f"distributed={name} needs CUDA GPUs .* use distributed=ddp"):
        run(tiny_config(f"distributed={name}", "data.train=/nonexistent.jsonl"))


def test_deepspeed_presets_say_how_to_install_deepspeed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'tunelab\[deepspeed\]'"):
        get_preset("deepspeed-zero3").check_machine()
    get_preset("fsdp").check_machine()  # PyTorch's own: nothing to install


def test_an_unknown_preset_names_the_choices(tiny_config):
    with pytest.raises(ConfigError, match='distributed: expected one of ddp|fsdp.*got "zero3"'):
        tiny_config("distributed=zero3")


def test_torchrun_counts_per_node_and_accelerate_counts_every_node():
    run_args = ["cfg.yaml", "lora.r=8"]
    one = command(run_args, Launch(4))
    assert one[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=4"] and "--standalone" in one
    assert one[-5:] == ["-m", "tunelab", "run", "cfg.yaml", "lora.r=8"]
    many = command(run_args, Launch(8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400))
    assert {"--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
            "--master-port=29400"} <= set(many) and "--standalone" not in many
    acc = command(run_args, Launch(8, nnodes=2, node_rank=1, master_addr="10.0.0.1", launcher="accelerate"))
    assert acc[1:3] == ["-m", "accelerate.commands.launch"]
    assert acc[acc.index("--num_processes") + 1] == "16" and acc[acc.index("--num_machines") + 1] == "2"
    assert acc[acc.index("--machine_rank") + 1] == "1" and acc[acc.index("--main_process_ip") + 1] == "10.0.0.1"


@pytest.mark.parametrize("where, message", [
    (Launch(2, nnodes=2), "--nnodes > 1 needs --master-addr"),
    (Launch(2, nnodes=2, node_rank=2, master_addr="h"), "--node-rank: expected 0 to 1"),
    (Launch(0), "expected at least 1"),
])
def test_a_bad_launch_is_one_line(where, message):
    with pytest.raises(ConfigError, match=message):
        command([], where)


def test_run_help_says_nproc_counts_this_node():
    text = subprocess.run([sys.executable, "-m", "tunelab", "run", "--help"], capture_output=True, text=True).stdout
    assert "processes on THIS node" in " ".join(text.split()) and "nproc x nnodes" in text


def test_the_global_batch_is_kept_across_world_sizes(tiny_config):
    assert split_global_batch(16, 2, 4) == (4, 2)
    assert split_global_batch(16, 8, 4) == (2, 1)  # the share of each process is smaller than the micro-batch
    assert split_global_batch(12, 8 // 2, 8) == (3, 1)
    with pytest.raises(ConfigError, match="global batch of 12 examples cannot be split evenly over 8 processes"):
        split_global_batch(12, 8, 2)
    config = tiny_config("train.batch_size=4", "train.grad_accum=1")
    same, message = adjust_to_world(config, {"processes": 4, "batch_size": 4, "grad_accum": 1}, 4)
    assert same is config and message is None
    moved, message = adjust_to_world(config, {"processes": 4, "batch_size": 4, "grad_accum": 1}, 1)
    assert (moved.train.batch_size, moved.train.grad_accum) == (4, 4) and config.train.grad_accum == 1
    assert message.endswith("resuming on 1 process(es) x batch 4 x accumulation 4: the same global batch of 16")
    assert adjust_to_world(config, None, 2) == (config, None)  # a fresh run: the config as written


def _ranks(rank: int, port: int, results) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    out = {"dir": ranks.from_main(f"runs/x-{rank}")}
    try:
        ranks.on_main(lambda: (_ for _ in ()).throw(ConfigError("main refused")))
    except ConfigError as err:
        out["error"] = str(err)
    distributed.check_same_config("same")
    try:
        distributed.check_same_config(f"differs on {rank}")
    except ConfigError as err:
        out["config"] = str(err)
    results.put((rank, out))
    torch.distributed.destroy_process_group()


def test_ranks_take_the_main_process_values_and_errors_and_refuse_another_config():
    got = run_two_ranks(_ranks, timeout=120)
    for rank in (0, 1):
        assert got[rank]["dir"] == "runs/x-0"  # the main process's run directory everywhere
        assert got[rank]["error"] == "main refused"  # no rank waits for a main process that failed
        assert got[rank]["config"].startswith("rank(s) 1 resolved another config than rank 0")


def test_the_slurm_example_is_valid_bash_and_its_launch_line_parses():
    from tests.conftest import REPO
    from tunelab.cli import _parser

    script = REPO / "examples" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    args = _parser().parse_args(["run", "my.yaml", "output_dir=runs/x", "--nproc", "8", "--nnodes", "2",
                                 "--node-rank", "1", "--master-addr", "node-a", "--master-port", "29500"])
    assert (args.nproc, args.nnodes, args.node_rank, args.master_addr) == (8, 2, 1, "node-a")
    text = script.read_text()
    for flag in ("--nproc $GPUS_PER_NODE", "--nnodes $SLURM_NNODES", "--node-rank \\$SLURM_NODEID",
                 "--master-addr $MASTER_ADDR"):
        assert flag in text
