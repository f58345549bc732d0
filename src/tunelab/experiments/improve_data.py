"""The too-little-data remedy's rows: `tunelab data synth` run on the search's fit rows as seeds, with the
run's own base model as teacher (offline). New rows are deduplicated against the seeds and leakage-checked
against the validation rows during the search; the held-out run's training file, every training row plus
the new rows, is leakage-checked against the held-out set then, when that set is read anyway.

Only where the held-out set is a file of its own: when it is a seeded split of data.train, another training
file would split into another held-out set, and the comparison with the original run would not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.data.formats import get_format
from tunelab.data.leakage import find_leaks
from tunelab.data.loading import load_dataset
from tunelab.errors import TunelabError
from tunelab.events import Events
from tunelab.inputs import training_rows
from tunelab.rundir import write_atomic

SYNTHETIC = "synthetic"  # the remedy's choice for data.train: fit rows plus as many new rows


def why_not_synthetic(config: Any, fmt: str) -> str | None:
    """Why the search cannot try synthetic rows for this run, or None when it can."""
    if config.data.eval is None:
        return "the held-out set is a split of data.train, so another training file would change it"
    if config.data.columns:
        return "data.columns renames the held-out file's fields; rename them in the files instead"
    if not get_format(fmt).synth:
        return f'data synth does not write "{fmt}" rows'
    return None


def synthetic_train(config: Any, out: Path, fit_path: Path, validation_path: Path, events: Events) -> Path:
    """out/data/train-synthetic.jsonl: the fit rows and as many new ones from `data synth` (made once; an
    improve asked again reuses it)."""
    from tunelab.data.synth import SynthOptions, synthesize
    from tunelab.data.teachers import LocalTeacher

    path = out / "data" / "train-synthetic.jsonl"
    if path.is_file():
        return path
    fit = load_dataset(fit_path)
    events.emit("improve_synthesizing", message=f"writing up to {len(fit.rows)} synthetic rows from the {len(fit.rows)} "
                                                f"fit rows with {config.model} as teacher ...")
    made = synthesize(fit_path, LocalTeacher(config.model), out / "data" / "synthetic.jsonl",
                      SynthOptions(n=len(fit.rows), seed=config.train.seed), held_out=validation_path)
    if not made.rows:
        raise TunelabError(f"{out / 'data' / 'synthetic.jsonl'}: data synth kept no row ({made.dropped_invalid} "
                           f"invalid, {made.dropped_duplicates} duplicate, {made.dropped_leaks} leaking)")
    write_rows(path, [*fit.rows, *made.rows])
    return path


def held_out_train(config: Any, out: Path) -> dict[str, Any]:
    """Settings for the held-out run of a synthetic-rows winner: every training row and the new rows that do
    not repeat a held-out row, in our field names."""
    train = training_rows(config)
    made = load_dataset(out / "data" / "synthetic.jsonl", train.format)
    held = load_dataset(config.data.eval, train.format, config.data.columns)
    leaking = {x.train_line for x in find_leaks(made, held, config.data.near_dup_threshold).leaks}
    kept = [row for row, line in zip(made.rows, made.lines) if line not in leaking]
    path = out / "data" / "all-train-synthetic.jsonl"
    write_rows(path, [*train.rows, *kept])
    return {"data.train": str(path.resolve()), "data.format": train.format, "data.columns": {}}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

