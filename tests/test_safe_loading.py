"""Hostile files: pickle weights and checkpoints never run code; dataset metadata never points outside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.errors import DataError, ModelError, TunelabError


class Payload:
    """Unpickling this object calls open(marker, "w"): the file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"model.embed_tokens.weight": Payload(marker)}, path)


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """Control: without weights_only the crafted file does create its marker, so the tests below can fail."""
    marker = tmp_path / "ran"
    write_payload(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture
def pickle_model_dir(tmp_path, tiny_model_dir) -> tuple[Path, Path]:
    """The tiny model's config and tokenizer with a crafted pytorch_model.bin instead of safetensors."""
    target = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("*.safetensors", ".complete"))
    marker = tmp_path / "pwned"
    write_payload(target / "pytorch_model.bin", marker)
    return target, marker


def test_a_pickle_only_model_dir_is_refused_without_running_it(pickle_model_dir, tiny_config):
    from tunelab.models.loading import LoadRules, load_model

    model_dir, marker = pickle_model_dir
    with pytest.raises(ModelError) as err:
        load_model(model_dir, rules=LoadRules.of(tiny_config(f"model={model_dir}")))
    assert "pickle files (pytorch_model.bin)" in str(err.value) and "allow_pickle" in str(err.value)
    assert not marker.exists()


def test_allow_pickle_still_reads_only_plain_tensors(pickle_model_dir, tiny_config):
    from tunelab.models.loading import LoadRules, load_model

    model_dir, marker = pickle_model_dir
    with pytest.raises(ModelError) as err:
        load_model(model_dir, rules=LoadRules.of(tiny_config(f"model={model_dir}", "allow_pickle=true")))
    assert "refused a weights file that holds more than plain tensors (Weights only load failed" in str(err.value)
    assert not marker.exists()


def test_a_crafted_checkpoint_with_a_matching_manifest_is_refused_on_resume(tiny_config, tmp_path):
    """An attacker can rewrite the manifest too; the unpickler is what keeps the payload from running."""
    from tunelab.train.checkpoint import write_manifest
    from tunelab.train.run import run

    config = tiny_config("train.max_steps=2", "train.save_steps=1", "eval.generate=false")

    from tunelab.errors import RunInterrupted

    def die_after_training(event):  # as if the process died after its last checkpoint
        if event.kind == "evaluating" and event.fields.get("which") == "after":
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):  # the run records the interruption and re-raises it as this
        run(config, die_after_training)
    checkpoint = config.output_dir / "checkpoints" / "checkpoint-2"
    marker = tmp_path / "pwned"
    write_payload(checkpoint / "optimizer.pt", marker)
    write_manifest(checkpoint, {"step": 2})
    with pytest.raises(ModelError) as err:
        run(config)
    assert str(err.value).startswith(f"{checkpoint}: refused a weights file that holds more than plain tensors")
    assert not marker.exists()


def test_tunelab_writes_no_pickle_that_needs_unsafe_loading(tiny_config):
    """Weights are safetensors; Trainer's optimizer/scheduler/RNG files load under weights_only=True
    (with the numpy allowlist Trainer itself uses for RNG states)."""
    from transformers.trainer_pt_utils import safe_globals

    from tunelab.train.run import run

    result = run(tiny_config("train.max_steps=1", "train.save_steps=1", "eval.generate=false"))
    written = [p for p in result.run_dir.rglob("*") if p.is_file()]
    weights = [p.name for p in written if "model" in p.name and p.suffix in (".safetensors", ".bin")]
    assert weights and all(name.endswith(".safetensors") for name in weights)
    assert not [p for p in written if p.name == "training_args.bin"]
    for path in written:
        if path.suffix in (".pt", ".pth", ".bin"):
            with safe_globals():
                torch.load(path, weights_only=True)


def test_a_saved_dataset_whose_state_points_outside_is_refused(tmp_path):
    import datasets

    from tunelab.data import load_dataset

    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(saved))
    state = json.loads((saved / "state.json").read_text())
    arrow = saved / state["_data_files"][0]["filename"]
    shutil.move(arrow, tmp_path / "secret.arrow")
    state["_data_files"][0]["filename"] = "../secret.arrow"
    (saved / "state.json").write_text(json.dumps(state))
    with pytest.raises(DataError) as err:
        load_dataset(saved)
    assert 'data file "../secret.arrow" lies outside the dataset directory' in str(err.value)


def test_an_existing_directory_that_is_not_a_run_is_not_written_into(tiny_config, tmp_path):
    from tunelab.train.run import run

    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    with pytest.raises(TunelabError) as err:
        run(tiny_config(f"output_dir={victim}"))
    assert "is not a tunelab run directory" in str(err.value)
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
