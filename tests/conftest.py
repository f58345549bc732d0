"""Shared fixtures: the tiny random model, small data files, and a quiet, offline environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the cores: torch's
# default of one thread per core in every worker would oversubscribe them and slow every test down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from tunelab.models import resolve_model

    return resolve_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def status_of_a_killed_run(run_dir: Path) -> None:
    """status.json as a killed process leaves it: still "running", with a heartbeat nobody renews (readers: dead)."""
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "running", "heartbeat_at": 0}))


@pytest.fixture
def chat_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(24)]


@pytest.fixture
def tiny_config(tmp_path, chat_rows):
    """A validated config for a seconds-long run of the tiny model on chat data (answers are timed one at a time
    only where a test asks, with eval.cost_rows: 16 lone calls to generate add seconds to every run)."""
    from tunelab.config import load_config

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows[:20])
    held = write_jsonl(tmp_path / "eval.jsonl", chat_rows[20:])

    def make(*overrides: str):
        return load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama",
                                  f"output_dir={tmp_path / 'run'}", "train.batch_size=4", "train.max_steps=4",
                                  "train.max_length=64", "eval.max_new_tokens=8", "eval.cost_rows=0", *overrides])

    return make
