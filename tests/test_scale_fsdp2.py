"""FSDP2 itself on this stack, on CPUs (gloo): `fully_shard` per decoder layer holds a LoRA layer's frozen and
trainable parameters in one unit and trains it; the sharded state dict written by 2 processes through
torch.distributed.checkpoint loads resharded onto a whole model in 1 process, bit for bit.

tunelab's `distributed=fsdp` preset reaches FSDP2 through accelerate, which turns FSDP on for GPU process groups
only: this checks the engine the preset relies on, where it can run here."""

from __future__ import annotations

import os

import torch

from tests.two_ranks import run_two_ranks


def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random-llama"))
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def _rank(rank: int, port: int, out: str, results) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = lora_model()
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.full_tensor().clone() for p in trained]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(rank))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    moved = sum(not torch.equal(b, p.full_tensor()) for b, p in zip(before, trained))
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=out)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:  # a file, not the queue: tensors sent through it die with their process
        torch.save({k: v for k, v in full.items() if "lora_" in k}, f"{out}-full.pt")
    results.put((rank, {"sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
                        "moved": moved, "trained": len(trained)}))
    dist.destroy_process_group()


def test_fsdp2_trains_lora_on_two_cpu_processes_and_its_checkpoint_reshards_onto_one(tmp_path):
    import torch.distributed.checkpoint as dcp

    got = run_two_ranks(_rank, str(tmp_path / "ckpt"))
    for rank in (0, 1):
        assert got[rank]["sharded"]  # every parameter, frozen base and LoRA alike, is a shard (DTensor)
        assert got[rank]["moved"] == got[rank]["trained"] > 0  # every adapter tensor took the step
    whole = lora_model()
    state = {"model": whole.state_dict()}
    dcp.load(state, checkpoint_id=str(tmp_path / "ckpt"))  # one process: resharded onto whole tensors
    full = torch.load(tmp_path / "ckpt-full.pt")
    assert len(full) == 28
    assert all(torch.equal(state["model"][k], v) for k, v in full.items())
