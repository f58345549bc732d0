"""Two CPU processes (gloo) train what one process trains: the same loss curve for the same global batch, the same
weights on both ranks, one set of files; a checkpoint written by 2 processes resumes on 1, and the reverse.

Tolerance (derived, not tuned): a step's loss is a mean over its n supervised tokens. Summing n positive terms
in any order in fp32 errs by at most (n-1)u of the sum (u = 2^-24, Higham's bound for recursive summation), so
two summation orders of the same terms differ by at most 2(n-1)u L. Two processes sum the tokens in two halves
and all-reduce; one process sums them in micro-batches: the curves must agree within that bound per step.
The weights then differ only by rounding too, which the final held-out loss bounds the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, status_of_a_killed_run, write_jsonl

U = 2.0 ** -24  # fp32 unit roundoff
STEPS = 4
# global batch 4 on both sides: 1 process x batch 2 x accumulation 2, or 2 processes x batch 2 x accumulation 1
BASE = ["model=tiny-random-llama", "train.batch_size=2", f"train.max_steps={STEPS}", "train.max_length=48",
        "train.precision=fp32", "train.logging_steps=1", "train.save_steps=2", "lora.dropout=0",
        "eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
        "train.keep_optimizer_state=true"]  # the resume tests cut a finished run back to a checkpoint
ONE, TWO = ["train.grad_accum=2"], ["train.grad_accum=1"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def tunelab_run(args: list[str], log: Path, nproc: int = 1) -> str:
    cmd = [sys.executable, "-m", "tunelab", "run", *args, *(["--nproc", str(nproc)] if nproc > 1 else [])]
    with open(log, "w") as handle:
        code = subprocess.run(cmd, env=environment(), stdout=handle, stderr=subprocess.STDOUT, timeout=600).returncode
    text = log.read_text()
    assert code == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One process and two processes (with gradient checkpointing: the DDP trap), the same config otherwise."""
    root = tmp_path_factory.mktemp("ddp")
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(20)]
    data = [f"data.train={write_jsonl(root / 'train.jsonl', rows[:16])}",
            f"data.eval={write_jsonl(root / 'eval.jsonl', rows[16:])}"]
    out = {"root": root, "data": data}
    out["one"] = root / "one"
    tunelab_run([*data, *BASE, *ONE, f"output_dir={out['one']}"], root / "one.log")
    out["two"] = root / "two"
    out["two_log"] = tunelab_run([*data, *BASE, *TWO, "train.gradient_checkpointing=true", f"output_dir={out['two']}"],
                                 root / "two.log", nproc=2)
    return out


def test_accelerate_launch_runs_what_torchrun_runs(runs):
    """`accelerate launch -m tunelab run ...` as docs/scale.md shows it (accelerate's own CLI module)."""
    out = runs["root"] / "accelerate"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "0", "-m", "tunelab", "run", *runs["data"], *BASE, *TWO, f"output_dir={out}"]
    with open(runs["root"] / "accelerate.log", "w") as handle:
        code = subprocess.run(cmd, env=environment(), stdout=handle, stderr=subprocess.STDOUT, timeout=600).returncode
    assert code == 0, (runs["root"] / "accelerate.log").read_text()[-3000:]
    assert_same_curve(runs["two"], out, range(1, STEPS + 1))
    assert json.loads((out / "summary.json").read_text())["distributed"]["processes"] == 2


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curve(run_dir: Path) -> dict[int, tuple[float, int]]:
    """step -> (train loss, supervised tokens of that step)."""
    seen, out = 0, {}
    for r in records(run_dir):
        if "train_loss" in r:
            out[r["step"]], seen = (r["train_loss"], r["tokens_seen"] - seen), r["tokens_seen"]
    return out


def bound(loss: float, tokens: int) -> float:
    return 2 * (tokens - 1) * U * loss


def assert_same_curve(a: Path, b: Path, steps: range) -> None:
    ca, cb = curve(a), curve(b)
    for step in steps:
        (la, na), (lb, nb) = ca[step], cb[step]
        assert na == nb  # the same examples were in the step
        assert abs(la - lb) <= bound(la, na), f"step {step}: {la} vs {lb}, bound {bound(la, na):.2e}"


def test_two_processes_give_the_loss_curve_of_one_with_the_same_global_batch(runs):
    assert_same_curve(runs["one"], runs["two"], range(1, STEPS + 1))
    one, two = (json.loads((runs[k] / "summary.json").read_text()) for k in ("one", "two"))
    held_tokens = sum(records(runs["one"])[-1]["eval_row_tokens"])
    assert abs(one["after"]["eval_loss"] - two["after"]["eval_loss"]) <= bound(one["after"]["eval_loss"], held_tokens)
    assert two["distributed"] == {"preset": "ddp", "processes": 2, "weights_agree": True}
    assert one["distributed"] == {"preset": "ddp", "processes": 1, "weights_agree": None}


def test_gradients_are_synced_so_both_ranks_hold_the_same_weights(runs):
    # weights_agree compares every trainable tensor of both ranks to the bit; the decoder called outside the DDP
    # wrapper (LmTrainer's supervised head before this fix) left each rank with its own weights
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["distributed"]["weights_agree"] is True
    a, b = (load_file(runs[k] / "model" / "adapter_model.safetensors") for k in ("one", "two"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # Adam steps of lr 1e-3 and rounding only


def test_the_main_process_alone_writes_logs_and_prints(runs):
    log = runs["two_log"]
    assert log.count("run dir ") == 1 and log.count("metric       zero-shot") == 1
    steps = [r["step"] for r in records(runs["two"]) if "train_loss" in r]
    assert steps == list(range(1, STEPS + 1))  # one line per step, not one per rank
    assert sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    manifest = json.loads((runs["two"] / "checkpoints" / "checkpoint-2" / "manifest.json").read_text())
    assert (manifest["processes"], manifest["batch_size"], manifest["grad_accum"]) == (2, 2, 1)
    assert "rng_state_1.pth" in manifest["files"]  # sealed after the second rank wrote its part
    assert (runs["two"] / "distributed" / "accelerate.yaml").is_file()
    assert not (runs["one"] / "distributed").exists()  # a plain one-process run has nothing to say


def cut_back(run_dir: Path, to: Path, step: int) -> Path:
    """The run as a process killed right after sealing checkpoint-<step> left it."""
    shutil.copytree(run_dir, to)
    for name in ("summary.json", "samples.jsonl", "report.md", "report.html"):
        (to / name).unlink()
    status_of_a_killed_run(to)
    shutil.rmtree(to / "model")
    for path in (to / "checkpoints").iterdir():
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    return to


@pytest.mark.parametrize("written, resumed", [("two", 1), ("one", 2)])
def test_a_checkpoint_resumes_on_another_world_size_with_the_same_global_batch(runs, written, resumed):
    cut = cut_back(runs[written], runs["root"] / f"{written}-on-{resumed}", step=2)
    log = tunelab_run([*runs["data"], *BASE, *(ONE if written == "one" else TWO),
                       *(["train.gradient_checkpointing=true"] if written == "two" else []),
                       f"output_dir={cut}", "--resume"], runs["root"] / f"{written}-on-{resumed}.log", nproc=resumed)
    layout = "1 process(es) x batch 2 x accumulation 2" if resumed == 1 else "2 process(es) x batch 2 x accumulation 1"
    assert f"resuming on {layout}: the same global batch of 4" in log
    assert_same_curve(runs[written], cut, range(1, STEPS + 1))  # steps 3-4 trained on the other world size
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["train"]["steps"] == STEPS and summary["distributed"]["processes"] == resumed
