"""Generate the `units` example: convert a length written in words into metres (prompt/completion rows).

A fourth small task of the fixed-output kind, used to measure train.epochs=auto against fixed epochs
(docs/compare-sweep.md). Train and held-out rows use disjoint numbers, so the model must generalise.

    python examples/make_units.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
UNITS = {"kilometres": 1000, "centimetres": 0.01, "millimetres": 0.001, "metres": 1}
INSTRUCTION = "Convert the length to metres. Answer with the number only."


def row(amount: int, unit: str) -> dict[str, str]:
    metres = amount * UNITS[unit]
    shown = f"{metres:.3f}".rstrip("0").rstrip(".")
    return {"prompt": f"{INSTRUCTION}\nLength: {amount} {unit}\nMetres:", "completion": f" {shown}"}


def rows(numbers: list[int], rng: random.Random) -> list[dict[str, str]]:
    return [row(n, rng.choice(sorted(UNITS))) for n in numbers]


def main() -> None:
    rng = random.Random(7)
    numbers = rng.sample(range(2, 1000), 300)
    out = HERE / "units"
    out.mkdir(exist_ok=True)
    for name, part in (("train", numbers[:240]), ("eval", numbers[240:])):
        text = "".join(json.dumps(r) + "\n" for r in rows(part, rng))
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
    (HERE / "units.yaml").write_text(
        "# Convert a length in kilometres, centimetres or millimetres into metres (examples/make_units.py).\n"
        "name: units\nmodel: smollm2-135m-instruct\ntask: sft\nmethod: lora\n"
        "data:\n  train: units/train.jsonl\n  eval: units/eval.jsonl\n"
        "train:\n  epochs: 1\n  batch_size: 8\n  max_length: 128\neval:\n  max_new_tokens: 12\n", encoding="utf-8")


if __name__ == "__main__":
    main()
