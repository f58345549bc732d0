"""Generate the continued-pretraining example: short pages of a fictional appliance maker's service
manual (seeded, so the files in git are reproducible).

The domain has its own vocabulary (product lines, fault codes, parts, procedures) that a general model
has never read. Train and held-out pages draw models, parts and technicians from disjoint pools, so
a held-out page is never a near-copy of a train page: a lower held-out perplexity means the model
learned the domain's language, not the pages.

    python examples/make_corpus.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "causal_lm"
LINES = ["Brightwell", "Corvane", "Halden", "Marrow", "Quillon", "Sentra", "Tavish", "Velmora", "Orrin", "Pellet"]
KINDS = ["dishwasher", "steam oven", "induction hob", "espresso unit", "fridge-freezer", "tumble dryer",
         "range hood", "bread maker", "sous-vide bath", "ice maker"]
PARTS = ["drain pump", "door gasket", "thermal fuse", "spray arm", "heating element", "control board", "NTC sensor",
         "inlet valve", "fan motor", "water filter", "hinge spring", "float switch", "drive belt", "steam generator",
         "descaling cartridge", "grease filter", "door latch", "pressure switch", "turbidity sensor", "relay pack"]
PEOPLE = ["Ines", "Bram", "Kofi", "Saoirse", "Teodor", "Yara", "Mikko", "Lotte", "Dara", "Emeka", "Noor", "Ruben",
          "Hedda", "Aziz", "Petra", "Joaquin", "Malin", "Tobias", "Femi", "Greet"]
SENTENCES = [
    "Fault code {code} on the {line} {kind} means the {part} did not respond within {n} seconds.",
    "Before opening the {line} housing, isolate the mains and wait {n} minutes for the capacitors to discharge.",
    "To clear {code}, hold START and PAUSE together for {n} seconds until the ring light blinks amber.",
    "The {part} is held by {n} Torx T20 screws; replace the washer whenever the {part} is removed.",
    "Service interval: inspect the {part} every {n} cycles and log the reading in the Halwick service book.",
    "If the ring light blinks red {n} times, the {part} has tripped; reset it once, then run test mode T{n}.",
    "Technician {person} recommends checking the {part} resistance: a healthy part reads {n}0 ohms.",
    "In test mode T{n} the {line} {kind} cycles the {part} on and off and shows the result as {code}.",
    "Never bypass the {part}. A {line} unit run without it voids the Halwick warranty.",
    "Descale the {line} {kind} with Halwick DS-{n} solution; the cycle takes about {n}0 minutes.",
    "Error {code} after a power cut is normal: the {kind} re-learns its {part} offset on the next run.",
    "Order spare {part} kits by the code HW-{n}{n}-{line3}; each kit fits every {line} model from {year}.",
    "Calibration: with the {part} disconnected, the display must read {code} and the fan must stop.",
    "Field note by {person}: a noisy {part} on the {line} {kind} is usually a loose mounting clip.",
    "The {line} {kind} logs the last {n} fault codes; read them by pressing MENU then holding the dial.",
    "After replacing the {part}, run the Halwick self-check and confirm that {code} does not return.",
]


def page(rng: random.Random, pools: dict[str, list[str]]) -> str:
    line = rng.choice(pools["line"])
    values = {"line": line, "line3": line[:3].upper(), "kind": rng.choice(KINDS), "person": rng.choice(pools["person"]),
              "n": rng.randint(2, 9), "year": rng.randint(2015, 2024), "code": f"{rng.choice('EFHU')}{rng.randint(10, 99)}"}
    sentences = rng.sample(SENTENCES, rng.randint(3, 4))
    return " ".join(s.format(part=rng.choice(pools["part"]), **values) for s in sentences)


def main() -> None:
    rng = random.Random(1234)
    train_pools = {"line": LINES[:7], "part": PARTS[:14], "person": PEOPLE[:14]}
    held_pools = {"line": LINES[7:], "part": PARTS[14:], "person": PEOPLE[14:]}
    HERE.mkdir(exist_ok=True)
    for name, pools, count in (("train", train_pools, 3000), ("eval", held_pools, 200)):
        pages = sorted({page(rng, pools) for _ in range(count)})
        rng.shuffle(pages)
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": text}) + "\n" for text in pages)
        print(f"{HERE / name}.jsonl: {len(pages)} pages")


if __name__ == "__main__":
    main()
