"""`tunelab data synth`: expand a few seed rows into more with a teacher model.

Two steps per new row, so even a small teacher only writes plain text: (1) shown a few seed inputs,
write a new input; (2) shown seed input/answer pairs as a chat, answer the new input. Each new row
passes the same validation, dedup (against the seeds and the rows kept so far) and, with a
held-out file, leakage check as user data; its teacher, prompts and seed lines go to a side file.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.clean import clean_row
from tunelab.data.dedup import DEFAULT_THRESHOLD, find_duplicates
from tunelab.data.formats import FORMATS, get_format, row_text, validate_row
from tunelab.data.leakage import find_leaks
from tunelab.data.loading import Dataset, load_dataset
from tunelab.data.rows import Row
from tunelab.data.teachers import Conversation, Teacher
from tunelab.errors import DataError

_LEAD = re.compile(r"^\s*(?:(?:new\s+)?example\s*\d*\s*:|\d+[.)])\s*", re.IGNORECASE)


@dataclass
class SynthOptions:
    n: int
    max_new_tokens: int = 128
    temperature: float = 0.9
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    shots: int = 3
    max_rounds: int = 5


@dataclass
class SynthResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    dropped_invalid: int = 0
    dropped_duplicates: int = 0
    dropped_leaks: int = 0
    attempts: int = 0
    provenance_path: Path | None = None

    @property
    def kept(self) -> int:
        return len(self.rows)


@dataclass
class Draft:
    """A candidate row and how it was made."""

    fields: dict[str, Any]
    prompts: list[Conversation]
    seed_lines: list[int]


def synthesize(seed_file: Path, teacher: Teacher, output: Path, options: SynthOptions,
               held_out: Path | None = None) -> SynthResult:
    seeds = load_dataset(seed_file)
    if not get_format(seeds.format).synth:
        written = [name for name, shape in FORMATS.items() if shape.synth]
        raise DataError(f'{seed_file}: synth writes {", ".join(written)} rows, not "{seeds.format}"')
    held = load_dataset(held_out, seeds.format) if held_out else None
    result = SynthResult()
    rng = random.Random(options.seed)
    for round_no in range(options.max_rounds):
        need = options.n - result.kept
        if need <= 0:
            break
        drafts = draft_rows(seeds, teacher, need + max(2, need // 2), options, rng, options.seed + 2 * round_no)
        result.attempts += len(drafts)
        _keep(drafts, seeds, held, result, options)
    result.rows, result.provenance = result.rows[:options.n], result.provenance[:options.n]
    result.provenance_path = write_output(result, teacher, output)
    return result


def draft_rows(seeds: Dataset, teacher: Teacher, count: int, options: SynthOptions, rng: random.Random,
               seed: int) -> list[Draft]:
    """`count` candidate rows: a new input from a few seed inputs, then the teacher's answer to it."""
    shape = get_format(seeds.format)
    picks = [rng.sample(range(len(seeds.rows)), min(options.shots, len(seeds.rows))) for _ in range(count)]
    labels = [_label_for(seeds, rng) for _ in picks]
    asks = [_input_request(seeds, pick, label) for pick, label in zip(picks, labels)]
    inputs = [_tidy(x) for x in teacher.chat(asks, options.max_new_tokens, options.temperature, seed)]
    if shape.answered:
        shows = [_answer_request(seeds, pick, new) for pick, new in zip(picks, inputs)]
        answers = [x.strip() for x in teacher.chat(shows, options.max_new_tokens, options.temperature, seed + 1)]
    else:
        answers = [None] * count
        shows = [[] for _ in range(count)]
    return [Draft(clean_row(shape.compose(new, answer, label, seeds.rows)), [ask, *([show] if show else [])],
                  [seeds.lines[i] for i in pick])
            for pick, label, ask, new, show, answer in zip(picks, labels, asks, inputs, shows, answers)]


def _label_for(seeds: Dataset, rng: random.Random) -> Any:
    """A label drawn as often as the seeds hold it, so the new rows keep the seeds' balance."""
    label = get_format(seeds.format).label_field
    return rng.choice(seeds.rows)[label] if label else None


def _input_request(seeds: Dataset, pick: list[int], label: Any) -> Conversation:
    shape = get_format(seeds.format)
    inputs = [shape.seed_input(r) for r in seeds.rows]
    shown = [i for i in pick if label is None or seeds.rows[i][shape.label_field] == label] or pick
    examples = "\n\n".join(f"Example {k}:\n{inputs[i]}" for k, i in enumerate(shown, start=1))
    want = f' with the label "{label}"' if label is not None else ""
    return [{"role": "user", "content": f"Here are examples{want}:\n\n{examples}\n\nWrite one new example{want} in "
                                        "the same style, about something different. Reply with the example only."}]


def _answer_request(seeds: Dataset, pick: list[int], new_input: str) -> Conversation:
    shape = get_format(seeds.format)
    inputs, answers = [shape.seed_input(r) for r in seeds.rows], [shape.seed_answer(r) for r in seeds.rows]
    turns: Conversation = []
    for i in pick:
        turns += [{"role": "user", "content": inputs[i]}, {"role": "assistant", "content": answers[i]}]
    return [*turns, {"role": "user", "content": new_input}]


def _tidy(text: str) -> str:
    """Drop the "Example 4:" lead a teacher may copy from the request, and wrapping quotes."""
    text = _LEAD.sub("", text.strip()).strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" else text


def _keep(drafts: list[Draft], seeds: Dataset, held: Dataset | None, result: SynthResult,
          options: SynthOptions) -> None:
    """Add the drafts that are valid, new (not copies of a seed, a kept row or each other) and not leaks."""
    valid = [d for d in drafts if not validate_row(Row(0, d.fields), seeds.format)]
    result.dropped_invalid += len(drafts) - len(valid)
    before = [row_text(r, seeds.format) for r in [*seeds.rows, *result.rows]]
    texts = before + [row_text(d.fields, seeds.format) for d in valid]
    copies = {t.dropped - len(before) for t in find_duplicates(texts, options.threshold) if t.dropped >= len(before)}
    fresh = [d for i, d in enumerate(valid) if i not in copies]
    result.dropped_duplicates += len(copies)
    if held is not None and fresh:
        drafted = Dataset(Path("<generated>"), seeds.format, [d.fields for d in fresh], list(range(len(fresh))))
        leaking = {x.train_line for x in find_leaks(drafted, held, options.threshold).leaks}
        result.dropped_leaks += len(leaking)
        fresh = [d for i, d in enumerate(fresh) if i not in leaking]
    result.rows += [d.fields for d in fresh]
    result.provenance += [{"prompts": d.prompts, "seed_lines": d.seed_lines} for d in fresh]


def write_output(result: SynthResult, teacher: Teacher, output: Path) -> Path:
    """The rows, and beside them OUT.provenance.jsonl: one line per row, same order."""
    output.parent.mkdir(parents=True, exist_ok=True)
    side = output.with_name(output.stem + ".provenance.jsonl")
    with open(output, "w", encoding="utf-8") as rows, open(side, "w", encoding="utf-8") as prov:
        for line, (row, made) in enumerate(zip(result.rows, result.provenance), start=1):
            rows.write(json.dumps(row, ensure_ascii=False) + "\n")
            prov.write(json.dumps({"line": line, "teacher": teacher.name, **made}, ensure_ascii=False) + "\n")
    return side
