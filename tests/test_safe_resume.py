"""Kill a real `tunelab run` process and resume it: the result must equal an uninterrupted run's, bit for bit.

CPU training here is deterministic, so equality is exact (torch.equal), not a tolerance: Trainer restores
weights, AdamW moments, the schedule, every RNG state and the data position from the checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, write_jsonl
from tunelab.rundir import RunDir
from tunelab.train.checkpoint import MANIFEST, step_of

MAX_STEPS = 5
# 12 rows, micro-batch 2, accumulation 2: 3 steps per epoch, so a run crosses an epoch boundary and most
# checkpoints sit mid-epoch; LoRA dropout makes the result depend on the restored RNG state.
SETTINGS = ["model=tiny-random-llama", "train.batch_size=2", "train.grad_accum=2", f"train.max_steps={MAX_STEPS}",
            "train.max_length=64", "eval.generate=false", "train.save_steps=1", "train.logging_steps=1",
            "lora.dropout=0.05"]  # not the default: dropout is what makes the restored RNG state matter


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("data")
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(16)]
    return [f"data.train={write_jsonl(root / 'train.jsonl', rows[:12])}",
            f"data.eval={write_jsonl(root / 'eval.jsonl', rows[12:])}"]


def command(data: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", "run", *data, *SETTINGS, f"output_dir={out}", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def finish(cmd: list[str], log: Path) -> str:
    with open(log, "w") as handle:
        code = subprocess.run(cmd, env=environment(), stdout=handle, stderr=subprocess.STDOUT, timeout=300).returncode
    text = log.read_text()
    assert code == 0, text[-2000:]
    return text


def stop_after_checkpoint(cmd: list[str], out: Path, step: int, sig: int, log: Path) -> tuple[int, str]:
    """Start a run, wait until checkpoint-<step> is sealed, then send the signal; output goes to a file so
    a full pipe can never stall the child."""
    sealed = out / "checkpoints" / f"checkpoint-{step}" / MANIFEST
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, env=environment(), stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not sealed.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        code = proc.wait(timeout=300)
    return code, log.read_text()


def weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "adapter_model.safetensors")


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def assert_same_result(run_dir: Path, reference: Path, context: str) -> None:
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()
    differ = [k for k in ours if not (ours[k] == theirs[k]).all()]
    assert not differ, f"{context}: {len(differ)} tensors differ, max {max((ours[k] - theirs[k]).abs().max() for k in differ)}"
    assert losses(run_dir) == losses(reference), context
    assert json.loads((run_dir / "summary.json").read_text())["train"]["steps"] == MAX_STEPS


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    finish(command(data, out), out.with_suffix(".log"))
    assert len(losses(out)) == MAX_STEPS
    return out


def test_sigkill_then_a_half_written_checkpoint_then_rerun_equals_the_uninterrupted_run(data, reference, tmp_path):
    kill_at = random.randint(1, MAX_STEPS - 2)
    out = tmp_path / "run"
    code, _ = stop_after_checkpoint(command(data, out), out, kill_at, signal.SIGKILL, tmp_path / "first.log")
    assert code == -signal.SIGKILL
    # Nobody was left to write its status: it still says running, and a reader sees that its process is gone.
    assert json.loads((out / "status.json").read_text())["state"] == "running" and RunDir(out).state() == "dead"
    checkpoints = out / "checkpoints"
    sealed = max(step_of(p) for p in checkpoints.glob("checkpoint-*") if (p / MANIFEST).exists())
    assert sealed >= kill_at
    # As if the kill had landed while Trainer wrote the next checkpoint: files there, no manifest, one cut short.
    partial = checkpoints / f"checkpoint-{sealed + 1}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoints / f"checkpoint-{sealed}", partial)
    (partial / MANIFEST).unlink()
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    # Rerunning the same command (no --resume) continues an unfinished output_dir.
    log = finish(command(data, out), tmp_path / "second.log")
    assert f"checkpoint-{sealed + 1}: removed an unusable checkpoint: no manifest" in log
    assert f"resuming {out} at step {sealed} from checkpoint" in log
    assert_same_result(out, reference, f"killed after checkpoint {kill_at}, resumed from {sealed}")


def test_sigterm_saves_exits_143_and_prints_a_resume_command_that_works(data, reference, tmp_path):
    stop_at = random.randint(1, MAX_STEPS - 2)
    out = tmp_path / "run"
    code, log = stop_after_checkpoint(command(data, out), out, stop_at, signal.SIGTERM, tmp_path / "first.log")
    assert code == 143, log[-2000:]
    stopped = [line for line in log.splitlines() if line.startswith("stopped: SIGTERM at step ")]
    step = int(stopped[0].split()[4].rstrip(":"))
    assert step >= stop_at and (out / "checkpoints" / f"checkpoint-{step}" / MANIFEST).exists()
    resume = [line for line in log.splitlines() if line.startswith("resume with: ")][0].removeprefix("resume with: ")
    args = shlex.split(resume)
    assert args[:2] == ["tunelab", "run"] and args[-1] == "--resume" and f"output_dir={out}" in args

    assert RunDir(out).state() == "interrupted"
    log = finish([sys.executable, "-m", "tunelab.cli", *args[1:]], tmp_path / "second.log")
    assert f"resuming {out} at step {step}" in log
    assert_same_result(out, reference, f"SIGTERM after checkpoint {stop_at}, saved at {step}")


def test_a_bf16_run_killed_and_rerun_equals_the_uninterrupted_bf16_run(data, tmp_path):
    """bf16 autocast is as deterministic on CPU as fp32: the resumed run matches bit for bit (bf16 forced, so
    the path `auto` takes on a CPU with native bf16 runs on every machine)."""
    bf16 = [*data, "train.precision=bf16"]
    reference = tmp_path / "reference"
    finish(command(bf16, reference), tmp_path / "reference.log")
    out = tmp_path / "run"
    code, _ = stop_after_checkpoint(command(bf16, out), out, 2, signal.SIGKILL, tmp_path / "first.log")
    assert code == -signal.SIGKILL
    log = finish(command(bf16, out), tmp_path / "second.log")
    assert f"resuming {out} at step" in log
    assert_same_result(out, reference, "bf16, killed after checkpoint 2")
    assert json.loads((out / "summary.json").read_text())["train"]["precision"] == "bf16"
