"""Generate the preference and RL examples (seeded, so the files in git are reproducible).

The property learned is checkable: answer with a JSON object. Each prompt asks for a person's name and
city from a sentence; a chosen answer is the JSON object, a rejected one the same facts in prose (reward,
dpo). The rlhf example has the prompts alone and rewards valid JSON (examples/json_reward.py). Train and
held-out rows draw names and cities from disjoint pools.

    python examples/make_preference.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
NAMES = ["Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Yuki", "Noah", "Emma", "Ravi",
         "Sofia", "Omar", "Hannah", "Mateo", "Ingrid", "Kwame", "Lucia", "Tomas", "Priya", "Ahmed", "Elena", "Jonas",
         "Mei", "Diego", "Amara", "Felix", "Nadia", "Oscar", "Leila", "Viktor"]
CITIES = ["Denver", "Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Porto", "Seoul", "Lyon",
          "Bergen", "Cairo", "Dublin", "Quito", "Perth", "Leeds", "Tucson", "Malmo", "Accra", "Hanoi"]
SENTENCES = ["{name} lives in {city}.", "{name} moved to {city} last year.", "Our guide in {city} was {name}.",
             "{name} was born in {city}.", "In {city}, {name} runs a small bakery."]
PROSE = ["{name} is in {city}.", "The person is {name} and the city is {city}.", "Name: {name}, city: {city}."]
INSTRUCTION = "Give the person's name and city as a JSON object."


def pair(rng: random.Random, names: list[str], cities: list[str]) -> tuple[list[dict], str, str]:
    name, city = rng.choice(names), rng.choice(cities)
    prompt = [{"role": "user", "content": f"{INSTRUCTION}\n{rng.choice(SENTENCES).format(name=name, city=city)}"}]
    chosen = json.dumps({"name": name, "city": city})
    return prompt, chosen, rng.choice(PROSE).format(name=name, city=city)


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(7)
    splits = {"train": (NAMES[:24], CITIES[:15], 160), "eval": (NAMES[24:], CITIES[15:], 32)}
    for split, (names, cities, n) in splits.items():
        rows = [dict(zip(("prompt", "chosen", "rejected"), pair(rng, names, cities))) for _ in range(n)]
        write(HERE / "preference" / f"{split}.jsonl", rows)
        write(HERE / "prompts" / f"{split}.jsonl", [{"prompt": r["prompt"]} for r in rows])


if __name__ == "__main__":
    main()
