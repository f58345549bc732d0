"""Guards on a real (tiny) training run: NaN/Inf steps, out-of-memory back-off, determinism, resume rules."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import status_of_a_killed_run
import tunelab.train.run as run_module
from tunelab.errors import ConfigError, RunAborted, RunInterrupted, TunelabError
from tunelab.train.checkpoint import problem
from tunelab.train.guards import SignalStop, is_out_of_memory, smaller_batch
from tunelab.train.run import run


def with_hook(monkeypatch, install) -> None:
    """Make run() load the model as usual, then call install(model) to add a fault-injecting hook."""
    original = run_module.load_pair

    def load_pair(*args, **kwargs):
        tokenizer, model = original(*args, **kwargs)
        install(model)
        return tokenizer, model

    monkeypatch.setattr(run_module, "load_pair", load_pair)


def poison_loss(on_calls: set[int] | None = None):
    """A forward hook that multiplies the training loss by inf on the given training forwards (1-based), or all."""
    calls = {"n": 0}

    def hook(module, args, output):
        if not module.training or output.loss is None:
            return output
        calls["n"] += 1
        if on_calls is None or calls["n"] in on_calls:
            output.loss = output.loss * math.inf
        return output

    return lambda model: model.register_forward_hook(hook)


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def died_in_final_evaluation(run_dir: Path) -> None:
    """As if the process had been killed before writing its summary: no summary, a status nobody updates."""
    (run_dir / "summary.json").unlink()
    status_of_a_killed_run(run_dir)


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def test_a_poisoned_step_is_skipped_leaving_weights_unchanged_and_the_run_goes_on(tiny_config, monkeypatch):
    with_hook(monkeypatch, poison_loss(on_calls={2}))
    events = []
    result = run(tiny_config("train.save_steps=1", "train.save_total_limit=4", "eval.generate=false"), events.append)
    assert [e.fields["step"] for e in events if e.kind == "step_skipped"] == [2]
    assert result.summary["train"]["steps"] == 4
    one, two, three = (adapter(result.run_dir / "checkpoints" / f"checkpoint-{s}") for s in (1, 2, 3))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(two[k], three[k]) for k in two)
    assert all(torch.isfinite(t).all() for t in adapter(result.run_dir / "model").values())


def test_nan_for_max_bad_steps_in_a_row_stops_the_run_with_the_step_and_rate(tiny_config, monkeypatch):
    with_hook(monkeypatch, poison_loss())
    events = []
    config = tiny_config("train.save_steps=1", "eval.generate=false", "train.max_bad_steps=3",
                         "train.learning_rate=0.001", "train.lr_scheduler=constant")
    with pytest.raises(RunAborted) as err:
        run(config, events.append)
    assert str(err.value).startswith("step 3: loss or gradients were NaN/Inf for 3 steps in a row at learning rate 0.001")
    assert "try a lower train.learning_rate (e.g. 1.0e-04)" in str(err.value)
    assert [e.fields["step"] for e in events if e.kind == "step_skipped"] == [1, 2]
    saved = sorted((config.output_dir / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in saved] == ["checkpoint-1", "checkpoint-2"]
    for path in saved:  # skipped steps change nothing: LoRA's B matrices are still their initial zeros
        tensors = adapter(path)
        assert all(torch.isfinite(t).all() for t in tensors.values())
        assert all((t == 0).all() for name, t in tensors.items() if "lora_B" in name)


def fail_batches_over(limit: int, error: type[BaseException], only_once_at_step: int | None = None):
    """A forward pre-hook that raises an out-of-memory error for training micro-batches over `limit` rows."""
    seen = {"forwards": 0, "fired": False}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if not module.training or ids is None:
            return None
        seen["forwards"] += 1
        if only_once_at_step is not None:
            if seen["forwards"] == only_once_at_step and not seen["fired"]:
                seen["fired"] = True
                raise error("simulated: out of memory")
            return None
        if ids.shape[0] > limit:
            raise error("simulated: out of memory")
        return None

    return lambda model: model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture
def direct_half_batch(tiny_config, tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    # The same hook (it never fires at 2 rows), so that both runs take the same forward path: a hooked model
    # keeps its own forward instead of the supervised head and the shared prefix (scoring.lm_loss).
    with_hook(monkeypatch, fail_batches_over(2, torch.OutOfMemoryError))
    config = tiny_config("train.batch_size=2", "train.grad_accum=2", "eval.generate=false",
                         f"output_dir={tmp_path / 'direct'}")
    return adapter(run(config).run_dir / "model")


def test_oom_on_the_first_step_halves_the_micro_batch_and_completes(tiny_config, monkeypatch, direct_half_batch):
    with_hook(monkeypatch, fail_batches_over(2, torch.OutOfMemoryError))
    events = []
    result = run(tiny_config("train.batch_size=4", "train.grad_accum=1", "eval.generate=false"), events.append)
    backoffs = [e for e in events if e.kind == "batch_backoff"]
    assert [(e.fields["step"], e.fields["batch_size"], e.fields["grad_accum"]) for e in backoffs] == [(1, 2, 2)]
    assert "same effective batch of 4" in backoffs[0].message
    assert result.summary["train"]["steps"] == 4
    # The retry is a fresh, reseeded Trainer: it equals a run configured with batch 2 x 2 from the start.
    ours = adapter(result.run_dir / "model")
    assert all(torch.equal(ours[k], direct_half_batch[k]) for k in ours)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_oom_after_training_began_returns_to_the_last_checkpoint(tiny_config, monkeypatch, tmp_path, precision):
    settings = ("eval.generate=false", "lora.dropout=0", f"train.precision={precision}")
    theirs = adapter(run(tiny_config(*settings, f"output_dir={tmp_path / 'reference'}")).run_dir / "model")
    # Steps 3-4 run as 2 x 2 micro-batches: the same examples, summed in another order. In fp32 that moves
    # nothing visible; bf16 keeps 8 significant bits, so each of the two runs may be as far from exact as
    # the uninterrupted run is from the same run in fp32.
    tolerance = 1e-6
    if precision == "bf16":
        exact = run(tiny_config(*settings[:2], "train.precision=fp32", f"output_dir={tmp_path / 'fp32'}"))
        tolerance = 2 * max_difference(theirs, adapter(exact.run_dir / "model"))
    with_hook(monkeypatch, fail_batches_over(0, torch.OutOfMemoryError, only_once_at_step=3))
    events = []
    result = run(tiny_config(*settings, "train.save_steps=1"), events.append)
    backoff = [e for e in events if e.kind == "batch_backoff"]
    assert [(e.fields["step"], e.fields["batch_size"], e.fields["grad_accum"]) for e in backoff] == [(3, 2, 2)]
    assert "retrying from step 2" in backoff[0].message
    diff = max_difference(adapter(result.run_dir / "model"), theirs)
    print(f"max |weight difference| after an OOM back-off at step 3 ({precision}): {diff:.3g}, allowed {tolerance:.3g}")
    assert diff < tolerance


@pytest.mark.parametrize("error,expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised_on_gpu_and_host(error, expected):
    assert is_out_of_memory(error) is expected


@pytest.mark.parametrize("batch,accum,expected", [(4, 1, (2, 2)), (6, 1, (3, 2)), (8, 3, (4, 6)), (5, 2, (1, 10))])
def test_smaller_batch_keeps_the_effective_batch(batch, accum, expected):
    assert smaller_batch(batch, accum, step=1) == expected
    assert expected[0] * expected[1] == batch * accum


def test_oom_at_batch_one_stops_with_advice():
    with pytest.raises(RunAborted, match="out of memory even with train.batch_size=1; try train.gradient_checkpointing"):
        smaller_batch(1, 4, step=7)


def test_same_config_and_seed_give_the_same_loss_curve_and_weights(tiny_config, tmp_path):
    runs = [run(tiny_config("eval.generate=false", "train.logging_steps=1", f"output_dir={tmp_path / str(i)}"))
            for i in range(2)]
    first, second = (train_losses(r.run_dir) for r in runs)
    assert len(first) == 4 and first == second
    a, b = (adapter(r.run_dir / "model") for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


class Died(Exception):
    """Stands for the process dying at an event."""


def die_at(kind: str, which: str | None = None):
    def listen(event):
        if event.kind == kind and event.fields.get("which", which) == which:
            raise Died(kind)

    return listen


def test_a_run_stopped_after_its_final_checkpoint_finishes_without_training_again(tiny_config):
    config = tiny_config("eval.generate=false", "train.save_steps=2")
    whole = run(tiny_config("eval.generate=false", "train.save_steps=2", f"output_dir={config.output_dir}-whole"))
    with pytest.raises(Died):
        run(config, die_at("evaluating", "after"))  # died during the final evaluation
    events = []
    second = run(config, events.append)
    assert [e.fields["step"] for e in events if e.kind == "resumed"] == [4]
    assert not [e for e in events if e.kind == "step"]  # Trainer alone would run a fifth step here
    assert second.summary["train"]["steps"] == 4
    assert second.summary["train"]["tokens"] == whole.summary["train"]["tokens"] > 0
    assert second.summary["train"]["tokens_per_second"] == 0  # counts only what this process trained
    trained, again = adapter(whole.run_dir / "model"), adapter(second.run_dir / "model")
    assert all(torch.equal(trained[k], again[k]) for k in trained)


def test_resuming_with_other_settings_is_refused(tiny_config):
    config = tiny_config("eval.generate=false", "train.save_steps=2")
    run(config)
    died_in_final_evaluation(config.output_dir)
    with pytest.raises(ConfigError, match=r"holds an unfinished run with other settings \(train.seed: 42 -> 7\)"):
        run(tiny_config("eval.generate=false", "train.save_steps=2", "train.seed=7"))


def test_a_finished_run_is_not_resumed_or_overwritten(tiny_config):
    config = tiny_config("eval.generate=false")
    run(config)
    with pytest.raises(TunelabError, match="already holds a finished run"):
        run(config, resume=True)


def test_resume_flag_without_output_dir_picks_the_newest_unfinished_run(tiny_config, tmp_path, monkeypatch):
    from tunelab.train.resume import find_run_dir

    monkeypatch.chdir(tmp_path)
    config = tiny_config("name=exp", "output_dir=null")
    for stamp, finished in [("20260101-000000", False), ("20260102-000000", False), ("20260103-000000", True)]:
        folder = tmp_path / "runs" / f"exp-{stamp}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("name: exp\n")
        if finished:
            (folder / "summary.json").write_text("{}")
    assert find_run_dir(config, resume=True).path == Path("runs") / "exp-20260102-000000"
    with pytest.raises(TunelabError, match="no unfinished run named other"):
        find_run_dir(tiny_config("name=other", "output_dir=null"), resume=True)


@contextmanager
def sigint_handled_by(handler) -> Iterator[None]:
    """SIGINT's handler set for one test, whatever the suite started with (it is SIG_IGN under nohup or `cmd &`)."""
    before = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def sigint_during_step(n: int) -> Callable[[torch.nn.Module], None]:
    """A forward hook that sends this process SIGINT (Ctrl-C) in the middle of training step n."""
    def install(model):
        calls = {"n": 0}

        def hook(module, args, output):
            calls["n"] += module.training
            if module.training and calls["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)
            return output

        model.register_forward_hook(hook)

    return install


def test_ctrl_c_during_training_saves_a_checkpoint_and_stops_with_exit_code_130(tiny_config, monkeypatch):
    called = []

    def users_handler(signum, frame):
        called.append(signum)

    with_hook(monkeypatch, sigint_during_step(2))
    config = tiny_config("eval.generate=false", "train.save_steps=0")  # the signal alone makes the checkpoint
    with sigint_handled_by(users_handler):
        with pytest.raises(RunInterrupted) as err:
            run(config)
        after = signal.getsignal(signal.SIGINT)
    assert err.value.exit_code == 130
    assert str(err.value) == f"SIGINT at step 2: checkpoint saved in {config.output_dir / 'checkpoints' / 'checkpoint-2'}"
    assert problem(config.output_dir / "checkpoints" / "checkpoint-2") is None
    assert after is users_handler and called == []  # tunelab took the signal, then put the handler back


def test_ctrl_c_is_not_caught_when_the_run_was_started_with_sigint_ignored(tiny_config, monkeypatch):
    with_hook(monkeypatch, sigint_during_step(2))
    with sigint_handled_by(signal.SIG_IGN):
        result = run(tiny_config("eval.generate=false", "train.save_steps=0"))
        after = signal.getsignal(signal.SIGINT)
    assert result.summary["train"]["steps"] == 4
    assert after is signal.SIG_IGN


@pytest.mark.parametrize("handler", [signal.default_int_handler, signal.SIG_DFL, lambda signum, frame: None],
                         ids=["python-default", "SIG_DFL", "custom"])
def test_signal_stop_restores_the_handlers_it_found_exactly(tmp_path, handler):
    stop = SignalStop(tmp_path)
    term_before = signal.getsignal(signal.SIGTERM)
    with sigint_handled_by(handler):
        with stop.installed():
            during = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is handler
    assert during == (stop._handle, stop._handle)
    assert stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is term_before


def test_signal_stop_leaves_an_ignored_signal_ignored(tmp_path):
    stop = SignalStop(tmp_path)
    with sigint_handled_by(signal.SIG_IGN):
        with stop.installed():
            during = signal.getsignal(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        after = signal.getsignal(signal.SIGINT)
    assert during is signal.SIG_IGN and after is signal.SIG_IGN
    assert stop.signum is None


def test_nan_guard_reads_the_loss_the_trainer_returns_not_the_models_forward(tmp_path):
    """A trainer that computes its own loss (as TRL and sentence-transformers do) never shows it on the model's
    forward output; the guard still skips the step whose loss is not finite."""
    from transformers import Trainer, TrainingArguments

    from tunelab.events import Events
    from tunelab.train.guards import NanGuard

    class OwnLoss(Trainer):
        calls = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            OwnLoss.calls += 1
            loss = (model(inputs["x"]) - inputs["y"]).pow(2).mean()
            return loss + math.inf if OwnLoss.calls == 2 else loss  # the gradients stay finite

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.ones(2) * i, "y": torch.ones(1)}

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, learning_rate=0.1,
                             report_to="none", use_cpu=True, save_strategy="no", remove_unused_columns=False)
    trainer = OwnLoss(model=model, args=args, train_dataset=Rows())
    guard = NanGuard(Events(None), max_bad=3)
    trainer.add_callback(guard)
    guard.watch(trainer)
    seen = []
    trainer.add_callback(type("Watch", (TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: seen.append(model.weight.detach().clone())})())
    trainer.train()
    assert torch.equal(seen[0], seen[1])  # step 2's non-finite loss was skipped
    assert not torch.equal(seen[1], seen[2])
    assert all(torch.isfinite(w).all() for w in seen)


@pytest.mark.parametrize("batch,multiple,expected", [(8, 4, (4, 2)), (12, 4, (4, 3)), (12, 3, (6, 2)), (6, 4, None)])
def test_oom_back_off_keeps_the_multiple_a_task_requires(batch, multiple, expected):
    if expected is None:
        with pytest.raises(RunAborted, match="multiple of 4"):
            smaller_batch(batch, 1, step=1, multiple=multiple)
        return
    assert smaller_batch(batch, 1, step=1, multiple=multiple) == expected
