"""Generate the shipped example tasks (seeded, so the files in git are reproducible).

Train and held-out rows draw names, cities and products from disjoint pools, so a held-out row is
never a near-copy of a train row and the tuned model must generalise, not recall.

    python examples/make_examples.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

FIRST = ["Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Yuki", "Noah", "Emma", "Ravi",
         "Sofia", "Omar", "Hannah", "Mateo", "Ingrid", "Kwame", "Lucia", "Tomas", "Priya", "Ahmed", "Elena", "Jonas",
         "Mei", "Diego", "Amara", "Felix", "Nadia", "Oscar", "Leila", "Viktor", "Zara", "Hugo", "Anya", "Samir",
         "Clara", "Kenji", "Rosa", "Ivan", "Nia", "Pablo", "Greta", "Tariq", "Alma", "Bruno", "Selin", "Arjun"]
LAST = ["Lopez", "Smith", "Khan", "Wang", "Petrova", "Silva", "Haddad", "Murphy", "Tanaka", "Cohen", "Schmidt",
        "Patel", "Rossi", "Farouk", "Berg", "Garcia", "Nilsson", "Mensah", "Romero", "Novak", "Iyer", "Aziz",
        "Popescu", "Weber", "Lin", "Torres", "Okafor", "Braun", "Hassan", "Eriksen", "Karimi", "Volkov", "Ali",
        "Dubois", "Ivanova", "Nasser", "Meyer", "Sato", "Costa", "Sokolov", "Adeyemi", "Ruiz", "Lund", "Rahman"]
CITIES = ["Denver", "Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Porto", "Seoul", "Lyon",
          "Bergen", "Cairo", "Dublin", "Quito", "Perth", "Leeds", "Tucson", "Malmo", "Accra", "Hanoi", "Zurich",
          "Bogota", "Tallinn", "Cork", "Fresno", "Turin", "Utrecht", "Kyoto", "Lagos", "Sevilla", "Boise", "Gdansk"]
JOBS = ["a nurse", "an engineer", "a teacher", "a baker", "a pilot", "a lawyer", "a painter", "a chef", "a farmer",
        "a librarian", "a plumber", "a dentist", "a journalist", "a carpenter", "a pharmacist", "a musician"]
TEMPLATES = [
    "{name} is {age} years old and lives in {city}. {pron} works as {job}.",
    "Meet {name}, {job} from {city}. {pron} turned {age} this year.",
    "After years abroad, {name} ({age}) settled in {city}, where {pron_l} works as {job}.",
    "{name}, age {age}, moved to {city} last spring to work as {job}.",
    "Our new volunteer is {name}. {pron} is {age}, lives in {city} and is {job} by training.",
    "{pron} is {job} in {city}: {name}, {age}, has lived there for a decade.",
    "Profile: {name} lives in {city}. Age: {age}. Occupation: {job}.",
    "In {city}, {job} named {name} celebrated turning {age} with friends.",
]
INSTRUCTION = "Extract the person's name, age and city as JSON."


def person_row(rng: random.Random, first: list[str], last: list[str], cities: list[str]) -> dict:
    name = f"{rng.choice(first)} {rng.choice(last)}"
    age, city, job = rng.randint(19, 78), rng.choice(cities), rng.choice(JOBS)
    pron = rng.choice(["He", "She", "They"])
    text = rng.choice(TEMPLATES).format(name=name, age=age, city=city, job=job, pron=pron, pron_l=pron.lower())
    answer = json.dumps({"name": name, "age": age, "city": city})
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n{text}"},
                         {"role": "assistant", "content": answer}]}


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DATE_FORMS = ["{month} {day}, {year}", "{day} {month} {year}", "the {ordinal} of {month}, {year}",
              "{mon}. {day} {year}", "{month} {ordinal}, {year}", "{day}/{m}/{year} (day/month/year)"]


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_row(rng: random.Random, years: range) -> dict:
    year, m, day = rng.choice(years), rng.randint(1, 12), rng.randint(1, 28)
    month = MONTHS[m - 1]
    phrase = rng.choice(DATE_FORMS).format(month=month, mon=month[:3], day=day, ordinal=_ordinal(day), year=year, m=m)
    return {"prompt": f"Rewrite the date in ISO 8601 (YYYY-MM-DD).\nDate: {phrase}\nISO:",
            "completion": f" {year:04d}-{m:02d}-{day:02d}"}


PRODUCTS = ["blender", "kettle", "backpack", "desk lamp", "rain jacket", "phone case", "coffee grinder", "headphones",
            "office chair", "toaster", "yoga mat", "water bottle", "hiking boots", "keyboard", "air fryer", "tent",
            "electric toothbrush", "sleeping bag", "monitor", "bike helmet", "rice cooker", "wallet", "umbrella",
            "standing desk", "smartwatch", "frying pan", "suitcase", "space heater", "webcam", "mattress"]
GOOD = ["works exactly as described", "feels solid and well made", "arrived early and well packed",
        "is quiet even on the highest setting", "was easy to set up in minutes", "has lasted a year of daily use",
        "looks even better than the photos", "is worth every penny", "keeps its charge for days",
        "is comfortable to use for hours", "cleans up in seconds", "does the job without any fuss"]
BAD = ["stopped working after a week", "feels cheap and flimsy", "arrived scratched and missing parts",
       "is louder than a vacuum", "took an hour to set up and still wobbles", "fell apart within a month",
       "looks nothing like the photos", "is a waste of money", "loses its charge overnight",
       "hurts to use for more than a few minutes", "is a pain to clean", "never did what it promised"]
SENTIMENT = {
    "positive": ["The {p} {g}. Would buy again.", "Really happy: the {p} {g}.", "I was not disappointed, the {p} {g}.",
                 "Five stars. The {p} {g} and {g2}.", "My new {p} {g}; no complaints at all."],
    "negative": ["The {p} {b}. Returning it.", "Very unhappy: the {p} {b}.", "I would not recommend it, the {p} {b}.",
                 "One star. The {p} {b} and {b2}.", "My new {p} {b}; not good at all."],
    "mixed": ["The {p} {g}, but it {b}.", "Mixed feelings: the {p} {g}, though it {b}.",
              "It {b}, yet the {p} {g}.", "The {p} {g}. On the other hand it {b}.",
              "Good and bad: the {p} {g} but {b}."],
}


def review_row(rng: random.Random, products: list[str], good: list[str], bad: list[str]) -> dict:
    label = rng.choice(sorted(SENTIMENT))
    g, g2 = rng.sample(good, 2)
    b, b2 = rng.sample(bad, 2)
    text = rng.choice(SENTIMENT[label]).format(p=rng.choice(products), g=g, g2=g2, b=b, b2=b2)
    return {"text": text, "label": label}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def unique(make, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        row = make()
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def main() -> None:
    rng = random.Random(1234)
    half = len(FIRST) * 3 // 4
    split_last, split_city = len(LAST) * 3 // 4, len(CITIES) * 3 // 4
    write(HERE / "quickstart" / "train.jsonl",
          unique(lambda: person_row(rng, FIRST[:half], LAST[:split_last], CITIES[:split_city]), 240))
    write(HERE / "quickstart" / "eval.jsonl",
          unique(lambda: person_row(rng, FIRST[half:], LAST[split_last:], CITIES[split_city:]), 60))
    write(HERE / "dates" / "train.jsonl", unique(lambda: date_row(rng, range(1950, 2010)), 240))
    write(HERE / "dates" / "eval.jsonl", unique(lambda: date_row(rng, range(2010, 2030)), 60))
    cut, g, b = len(PRODUCTS) * 3 // 4, len(GOOD) * 2 // 3, len(BAD) * 2 // 3
    write(HERE / "classify" / "train.jsonl", unique(lambda: review_row(rng, PRODUCTS[:cut], GOOD[:g], BAD[:b]), 240))
    write(HERE / "classify" / "eval.jsonl", unique(lambda: review_row(rng, PRODUCTS[cut:], GOOD[g:], BAD[b:]), 60))


if __name__ == "__main__":
    main()
