"""Generate the contrastive example (seeded, reproducible): each anchor is a short event sentence, its
positive the same event paraphrased, its negative the anchor's own wording with one detail (the person,
the city or the day) changed.

The untuned encoder ranks the negative first whenever wording outweighs who, where and when; tuning on
these triplets teaches it the opposite. Held-out rows use people and cities never seen in training.

    python examples/make_contrastive.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_ner import CITIES, PEOPLE, split_pool

HERE = Path(__file__).parent / "contrastive"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
EVENTS = [  # (how the anchor says it, how the positive says it)
    ("{per} flew to {city} on {day}.", "On {day}, {per} took a plane to {city}."),
    ("{per} moved to {city} on {day}.", "{city} became {per}'s new home on {day}."),
    ("{per} gave a talk in {city} on {day}.", "A lecture by {per} took place in {city} on {day}."),
    ("{per} opened a bakery in {city} on {day}.", "On {day} a new bakery run by {per} opened its doors in {city}."),
    ("{per} won a chess tournament in {city} on {day}.", "The {city} chess event on {day} was won by {per}."),
    ("{per} got married in {city} on {day}.", "{per}'s wedding was held in {city} on {day}."),
]


def triplet(people: list[str], cities: list[str], rng: random.Random) -> dict[str, str]:
    said, paraphrase = rng.choice(EVENTS)
    facts = {"per": rng.choice(people), "city": rng.choice(cities), "day": rng.choice(DAYS)}
    changed = rng.choice(["per", "city", "day"])
    pool = {"per": people, "city": cities, "day": DAYS}[changed]
    other = {**facts, changed: rng.choice([v for v in pool if v != facts[changed]])}
    return {"anchor": said.format(**facts), "positive": paraphrase.format(**facts), "negative": said.format(**other)}


def main() -> None:
    rng = random.Random(11)
    people, cities = split_pool(PEOPLE), split_pool(CITIES)
    for name, index, count in (("train", 0, 240), ("eval", 1, 60)):
        rows = [triplet(people[index], cities[index], rng) for _ in range(count)]
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
