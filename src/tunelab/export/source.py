"""A finished run directory as an export source: its config, summary, method and task, the tuned model
loaded through the method and task contracts, and the held-out rows to verify an export on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError, TunelabError
from tunelab.rundir import RunDir

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class Source:
    run_dir: Path
    config: Any
    summary: dict[str, Any]

    @property
    def method(self) -> Any:
        from tunelab.methods import get_method

        return get_method(self.config.method)

    @property
    def task(self) -> Any:
        from tunelab.tasks import get_task

        return get_task(self.config.task)

    @property
    def model_dir(self) -> Path:
        """What the run's method saved (with the tokenizer beside it)."""
        return RunDir(self.run_dir).model_dir

    @property
    def artifact_is_whole_model(self) -> bool:
        """What the method saved is a complete checkpoint (full fine-tuning), not an adapter over the base."""
        return (self.model_dir / "config.json").is_file() and any((self.model_dir / n).is_file() for n in WEIGHT_FILES)


def open_run(run_dir: Path) -> Source:
    """A finished run (read by `inputs.open_run`), or a one-line error saying what the directory lacks."""
    from tunelab.inputs import open_run as read_run

    run = read_run(run_dir)
    return Source(run.run_dir.path, run.config, run.summary or {})


def spec_of(source: Source) -> Any:
    return source.task.model_spec(source.config, None)


def load_tuned(source: Source, full_precision: bool = False) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and the run's tuned model, as the run built it; full_precision loads the base without the
    method's load options (no 4-bit base), which is what a merge needs."""
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, full_precision as without_quantization, load_pair

    spec, rules, method = spec_of(source), LoadRules.of(source.config), source.method
    options = method.load_options(source.config, spec)
    options = without_quantization(options) if full_precision else options
    tokenizer, base = load_pair(resolve_model(source.config.model), spec, rules, **options)
    model = method.load(base, source.model_dir, spec, rules)
    return tokenizer, model.eval()


def base_config(source: Source) -> dict[str, Any]:
    from tunelab.models import resolve_model

    return json.loads((resolve_model(source.config.model) / "config.json").read_text(encoding="utf-8"))


@dataclass
class Probe:
    """One held-out row as the model sees it: the whole row's ids (for logits) and its prompt's ids (for
    greedy generation; None when the row has no answer to generate)."""

    line: int
    ids: list[int]
    prompt_ids: list[int] | None


def held_out_probes(source: Source, tokenizer: Any, limit: int) -> list[Probe]:
    """The run's held-out rows (its eval file, or the same seeded split of train), at most `limit`."""
    from tunelab.data.formats import get_format
    from tunelab.inputs import load_data

    config = source.config
    try:
        held = load_data(config, check_leakage=False).held  # leakage was checked when the run trained
    except TunelabError as err:
        raise TunelabError(f"{source.run_dir}: cannot read the run's held-out rows to verify on: {err}") from None
    fmt = get_format(held.format)
    probes = []
    for row, line in list(zip(held.rows, held.lines))[:limit]:
        try:
            ids, _ = fmt.encode(row, tokenizer)
        except NotImplementedError:
            ids = tokenizer(fmt.text(row), add_special_tokens=True)["input_ids"]
        prompt = fmt.generation_prompt(row, tokenizer)
        probes.append(Probe(line, ids[: config.train.max_length], prompt.ids if prompt is not None else None))
    if not probes:
        raise ConfigError(f"{source.run_dir}: the run has no held-out rows to verify an export on")
    return probes
