"""Model resolution: aliases, local dirs, clear errors, and safe concurrent materialisation."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from tunelab.errors import ModelError
from tunelab.models import registry


def test_tiny_model_is_small_and_uses_the_bundled_tokenizer(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.num_hidden_layers == 2 and config.hidden_size == 64 and config.vocab_size == 49152
    assert (tiny_model_dir / "tokenizer.json").is_file()


def test_local_dir_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        registry.resolve_model(str(tmp_path))


def test_local_checkpoint_dir_resolves(tiny_model_dir):
    assert registry.resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_two_concurrent_materialisations_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    calls = []

    def slow_build(target):
        calls.append(target)
        time.sleep(0.5)
        (target / "config.json").write_text("{}")

    monkeypatch.setitem(registry.BUNDLED, "fake", registry.BundledModel("fake", "causal-lm", "test", slow_build))
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.resolve_model("fake"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results[0] == results[1] and (results[0] / "config.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == ["fake-v1"]


def _resolve_when_both_ready(barrier, results) -> None:
    barrier.wait()
    results.put(str(registry.resolve_model("fake")))


def test_two_processes_asking_for_the_same_alias_at_once_build_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    builds = tmp_path / "builds.log"

    def slow_build(target):
        with open(builds, "a") as log:  # O_APPEND: each process's line lands whole
            log.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (target / "config.json").write_text("{}")

    monkeypatch.setitem(registry.BUNDLED, "fake", registry.BundledModel("fake", "causal-lm", "test", slow_build))
    fork = multiprocessing.get_context("fork")  # the children inherit the fake alias patched in above
    barrier, results = fork.Barrier(2), fork.Queue()
    workers = [fork.Process(target=_resolve_when_both_ready, args=(barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert len(builds.read_text().splitlines()) == 1
    assert [w.exitcode for w in workers] == [0, 0]
    paths = {results.get(timeout=5) for _ in workers}
    assert paths == {str(tmp_path / "models" / "fake-v1")}
    assert (tmp_path / "models" / "fake-v1" / "config.json").read_text() == "{}"


def test_failed_build_leaves_nothing_half_made(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))

    def broken(target):
        (target / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(registry.BUNDLED, "broken", registry.BundledModel("broken", "causal-lm", "test", broken))
    with pytest.raises(RuntimeError):
        registry.resolve_model("broken")
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []
