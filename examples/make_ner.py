"""Generate the NER example (seeded, so the files in git are reproducible): short news-like sentences
tagged with people (PER), cities (LOC) and companies (ORG) in BIO.

Train and held-out rows draw names, cities and companies from disjoint pools, so the held-out entities
were never seen in training: a dictionary of training words finds none of them, and the tuned model
must tag from context.

    python examples/make_ner.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "ner"
PEOPLE = ["Maria Lopez", "James Smith", "Aisha Khan", "Chen Wang", "Olga Petrova", "Pedro Silva", "Fatima Haddad",
          "Liam Murphy", "Yuki Tanaka", "Noah Cohen", "Emma Schmidt", "Ravi Patel", "Sofia Rossi", "Omar Farouk",
          "Hannah Berg", "Mateo Garcia", "Ingrid Nilsson", "Kwame Mensah", "Lucia Romero", "Tomas Novak", "Priya Iyer",
          "Ahmed Aziz", "Elena Popescu", "Jonas Weber", "Mei Lin", "Diego Torres", "Amara Okafor", "Felix Braun",
          "Nadia Hassan", "Oscar Eriksen", "Leila Karimi", "Viktor Volkov", "Zara Ali", "Hugo Dubois", "Anya Ivanova",
          "Samir Nasser", "Clara Meyer", "Kenji Sato", "Rosa Costa", "Ivan Sokolov"]
CITIES = ["Denver", "Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Porto", "Seoul", "Lyon", "Bergen",
          "Cairo", "Dublin", "Quito", "Perth", "Leeds", "Tucson", "Malmo", "Accra", "Hanoi", "Zurich", "Bogota",
          "Tallinn", "Cork", "Fresno", "Turin", "Utrecht", "Kyoto", "Lagos", "Sevilla"]
COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella Labs", "Stark Industries", "Wayne Foods", "Hooli",
             "Vandelay Imports", "Soylent Group", "Tyrell Systems", "Cyberdyne", "Aperture Science", "Massive Dynamic",
             "Oscorp", "Wonka Candy", "Nakatomi Trading", "Gringotts Bank", "Blue Sun", "Monarch Solar", "Virtucon"]
TEMPLATES = [
    "{PER} joined {ORG} in {LOC} last year .",
    "{ORG} opened a new office in {LOC} , said {PER} .",
    "According to {PER} , {ORG} will hire fifty engineers .",
    "{PER} flew from {LOC} to {LOC} for the meeting .",
    "Shares of {ORG} rose after {PER} spoke in {LOC} .",
    "The mayor of {LOC} met {PER} on Tuesday .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "Heavy rain closed schools in {LOC} on Monday .",
    "{ORG} and {ORG} agreed to merge , {PER} confirmed .",
    "{PER} grew up in {LOC} before moving to {LOC} .",
]


def sentence(template: str, pools: dict[str, list[str]], rng: random.Random) -> dict[str, list[str]]:
    tokens, tags = [], []
    for word in template.split():
        if word.startswith("{") and word.endswith("}"):
            kind = word[1:-1]
            parts = rng.choice(pools[kind]).split()
            tokens += parts
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return {"tokens": tokens, "tags": tags}


def split_pool(values: list[str]) -> tuple[list[str], list[str]]:
    cut = len(values) * 3 // 4
    return values[:cut], values[cut:]


def main() -> None:
    rng = random.Random(7)
    halves = {kind: split_pool(values) for kind, values in (("PER", PEOPLE), ("LOC", CITIES), ("ORG", COMPANIES))}
    for name, index, count in (("train", 0, 240), ("eval", 1, 60)):
        pools = {kind: pair[index] for kind, pair in halves.items()}
        rows = [sentence(rng.choice(TEMPLATES), pools, rng) for _ in range(count)]
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
