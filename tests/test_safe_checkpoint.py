"""The checkpoint manifest: what counts as complete, what is removed, what rotation keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.train.checkpoint import MANIFEST, latest_complete, problem, prune, read_manifest, write_manifest
from tunelab.events import Events


def fake_checkpoint(root: Path, step: int, value: float | None = None, seal: bool = True,
                    higher_is_better: bool = False) -> Path:
    path = root / f"checkpoint-{step}"
    (path / "sub").mkdir(parents=True)
    (path / "optimizer.pt").write_bytes(bytes([step]) * 100)
    (path / "sub" / "weights.safetensors").write_bytes(b"w" * step)
    (path / "training_args.bin").write_bytes(b"pickled args")
    if seal:
        write_manifest(path, {"step": step, "best_metric": "m", "value": value, "higher_is_better": higher_is_better})
    return path


def test_a_sealed_checkpoint_verifies_and_lists_every_file_but_no_pickled_args(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    manifest = read_manifest(path)
    assert sorted(manifest["files"]) == ["optimizer.pt", "sub/weights.safetensors"]
    assert manifest["files"]["optimizer.pt"]["bytes"] == 100
    assert problem(path) is None
    assert not (path / "training_args.bin").exists()


@pytest.mark.parametrize("damage,reason", [
    (lambda p: (p / MANIFEST).unlink(), "no manifest"),
    (lambda p: (p / "optimizer.pt").write_bytes(b"\0" * 50), 'file "optimizer.pt" does not match'),
    (lambda p: (p / "sub" / "weights.safetensors").unlink(), 'file "sub/weights.safetensors" is missing'),
    (lambda p: (p / MANIFEST).write_text("{not json"), "no manifest"),
])
def test_a_damaged_checkpoint_names_what_is_wrong(tmp_path, damage, reason):
    path = fake_checkpoint(tmp_path, 3)
    damage(path)
    assert reason in problem(path)


def test_a_manifest_entry_cannot_reach_outside_its_checkpoint(tmp_path):
    (tmp_path / "secret").write_bytes(b"x")
    path = fake_checkpoint(tmp_path / "ckpts", 1)
    manifest = read_manifest(path)
    manifest["files"]["../../secret"] = {"sha256": "0" * 64}
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert 'file "../../secret" is missing or escapes the checkpoint' in problem(path)


def test_latest_complete_skips_and_removes_a_half_written_newer_checkpoint(tmp_path):
    seen = []
    fake_checkpoint(tmp_path, 2)
    good = fake_checkpoint(tmp_path, 4)
    partial = fake_checkpoint(tmp_path, 6, seal=False)
    assert latest_complete(tmp_path, Events(seen.append)) == good
    assert not partial.exists() and good.exists()
    assert "checkpoint-6: removed an unusable checkpoint: no manifest" in seen[0].message


def test_latest_complete_ignores_symlinked_and_oddly_named_directories(tmp_path):
    outside = fake_checkpoint(tmp_path / "elsewhere", 9)
    root = tmp_path / "ckpts"
    good = fake_checkpoint(root, 1)
    (root / "checkpoint-9").symlink_to(outside)
    fake_checkpoint(root / "nested", 12)
    assert latest_complete(root) == good


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, None)]:
        fake_checkpoint(tmp_path, step, loss)
    fake_checkpoint(tmp_path, 6, seal=False)  # being written right now: not counted, not touched
    removed = prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-5",
                                                          "checkpoint-6"]


def test_prune_keeps_the_best_by_a_metric_where_higher_is_better(tmp_path):
    for step, accuracy in [(1, 0.9), (2, 0.5), (3, 0.6), (4, 0.7)]:
        fake_checkpoint(tmp_path, step, accuracy, higher_is_better=True)
    removed = prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["checkpoint-2"]  # checkpoint-1 holds the best accuracy


def test_a_finished_run_keeps_its_checkpoints_weights_and_no_pickle(tiny_config):
    """The README says everything tunelab writes is safetensors; a finished run kept optimizer.pt, scheduler.pt and
    rng_state.pth. An unfinished run keeps them, to resume from."""
    from tunelab.train.checkpoint import checkpoint_dirs, latest_complete, problem
    from tunelab.train.run import run

    result = run(tiny_config("train.max_steps=2", "train.save_steps=1", "eval.generate=false",
                             "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0"))
    saved = checkpoint_dirs(result.run_dir / "checkpoints")
    assert [step for step, _ in saved] == [1, 2]
    for _, path in saved:
        names = sorted(p.name for p in path.iterdir())
        assert "adapter_model.safetensors" in names and "trainer_state.json" in names
        assert not [n for n in names if n.endswith((".pt", ".pth", ".bin"))], names
        assert problem(path).startswith("it holds weights only")  # resealed: nothing resumes from it
    assert not [p for p in result.run_dir.rglob("*") if p.suffix in (".pt", ".pth", ".bin")]
    (result.run_dir / "summary.json").unlink()  # as if it had died after the last save: it starts over, safely
    assert latest_complete(result.run_dir / "checkpoints") is None


def test_keep_optimizer_state_leaves_a_finished_runs_checkpoints_resumable(tiny_config):
    """train.keep_optimizer_state: a user who will train further (or cut a run back to a checkpoint) keeps what
    resuming needs; the files still load under weights_only (test_safe_loading)."""
    from tunelab.train.checkpoint import checkpoint_dirs, latest_complete
    from tunelab.train.run import run

    result = run(tiny_config("train.max_steps=2", "train.save_steps=1", "eval.generate=false", "eval.forgetting_probe=false",
                             "eval.few_shot_k=0", "eval.train_sample=0", "train.keep_optimizer_state=true"))
    for _, path in checkpoint_dirs(result.run_dir / "checkpoints"):
        assert {"optimizer.pt", "scheduler.pt"} <= {p.name for p in path.iterdir()}
    assert latest_complete(result.run_dir / "checkpoints").name == "checkpoint-2"
