"""Packed vs unpacked continued pretraining: real (non-padding) tokens per second of the same trainer on
the same documents, LoRA on the bundled model, a few steps each, alternated so machine noise hits both.

    flock /tmp/tunelab-heavy.lock env PYTHONPATH=src python benchmarks/packing.py [steps] [rounds]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.events import Events
from tunelab.methods import get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.tasks import get_task
from tunelab.train.trainer import common_args, quiet

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "causal_lm" / "train.jsonl"


def tokens_per_second(task, model, tokenizer, prepared, config, packing: bool, steps: int, out: Path) -> float:
    prepared.info["packing"] = packing
    args = {**common_args(config, out), "max_steps": steps, "save_strategy": "no", "warmup_steps": 0}
    trainer = quiet(task.trainer(model, tokenizer, prepared, args, []))
    started = time.monotonic()
    trainer.train()
    return trainer.state.num_input_tokens_seen / (time.monotonic() - started)


def main(steps: int = 8, rounds: int = 2) -> None:
    config = load_config(None, [f"data.train={CORPUS}", "task=causal_lm", "train.batch_size=8",
                                "train.max_length=256", "eval.train_sample=0"])
    data = load_dataset(CORPUS, "auto")
    task = get_task("causal_lm")
    torch.manual_seed(0)
    tokenizer, model = load_pair(resolve_model(config.model), task.model_spec(config, data), LoadRules())
    prepared = task.prepare(config, tokenizer, data, data, Events())
    model = get_method("lora").apply(model, config, task.model_spec(config, data))
    speeds: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for packing in (False, True):
                speeds[packing].append(tokens_per_second(task, model, tokenizer, prepared, config, packing, steps,
                                                         Path(tmp)))
    unpacked, packed = (sum(speeds[p]) / rounds for p in (False, True))
    print(f"threads={torch.get_num_threads()} steps={steps} rounds={rounds} batch=8 LoRA r16 on {config.model}")
    print(f"unpacked {unpacked:.1f} tokens/s {[round(s, 1) for s in speeds[False]]}")
    print(f"packed   {packed:.1f} tokens/s {[round(s, 1) for s in speeds[True]]}")
    print(f"speed-up x{packed / unpacked:.2f}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
