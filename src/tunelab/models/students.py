"""Students built from a teacher: the same model with a subset of its decoder layers, each initialised
from the teacher layer it keeps (DistilBERT-style), saved once to the cache like a bundled model."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from tunelab.errors import ConfigError, ModelError
from tunelab.models.loading import LoadRules, ModelSpec, load_model, load_tokenizer
from tunelab.models.registry import build_once, cache_dir

LAYER_KEY = re.compile(r"(^|\.)(layers|h|blocks|layer)\.(\d+)\.")  # model.layers.3. (Llama), transformer.h.3. (GPT-2)


def layer_count(teacher: Path) -> int:
    config = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    count = config.get("num_hidden_layers", config.get("n_layer"))
    if not isinstance(count, int):
        raise ModelError(f"{teacher}/config.json: no num_hidden_layers; cannot choose layers for a student")
    return count


def chosen_layers(teacher: Path, layers: list[int] | str) -> list[int]:
    """distill.student_layers as layer indices: "every_other" keeps 0, 2, 4, ...; a list is checked."""
    count = layer_count(teacher)
    chosen = list(range(0, count, 2)) if layers == "every_other" else list(layers)
    bad = [i for i in chosen if not 0 <= i < count]
    if bad or not chosen or chosen != sorted(set(chosen)):
        raise ConfigError(f"distill.student_layers: expected distinct increasing layer indices in 0-{count - 1} "
                          f"(the teacher has {count} layers), got {layers}")
    return chosen


def fingerprint(directory: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times: a retrained teacher gets a new student."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())


def student_from_teacher(teacher: Path, layers: list[int], rules: LoadRules) -> Path:
    """The cached student directory for these teacher layers (built on first use)."""
    key = hashlib.sha256(json.dumps([str(teacher), fingerprint(teacher), layers]).encode()).hexdigest()[:12]
    target = cache_dir() / "students" / f"{teacher.name}-{len(layers)}-layers-{key}"
    return build_once(target, lambda out: build_student(teacher, layers, rules, out))


def renumbered(state: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    """Kept layers' weights under their new indices; every other weight (embeddings, norm, head) as is."""
    new_index = {old: new for new, old in enumerate(layers)}
    out = {}
    for name, tensor in state.items():
        match = LAYER_KEY.search(name)
        if match is None:
            out[name] = tensor
        elif int(match.group(3)) in new_index:
            prefix = f"{match.group(1)}{match.group(2)}."
            out[name[:match.start()] + prefix + f"{new_index[int(match.group(3))]}." + name[match.end():]] = tensor
    return out


def student_model(teacher: torch.nn.Module, layers: int, trust_remote_code: bool = False) -> torch.nn.Module:
    """The teacher's architecture with `layers` decoder layers, weights not yet loaded."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)


def build_student(teacher: Path, layers: list[int], rules: LoadRules, target: Path) -> None:
    model = load_model(teacher, ModelSpec("causal_lm"), rules)
    if getattr(model.config, "layer_types", None):  # per-layer attention kinds (sliding/full) follow their layers
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    student = student_model(model, len(layers), rules.trust_remote_code)
    try:
        student.load_state_dict(renumbered(model.state_dict(), layers), strict=True)
    except RuntimeError as err:
        raise ModelError(f"{teacher}: cannot keep a subset of this model's layers "
                         f"({str(err).splitlines()[0][:160]}); give the student as model= instead") from None
    student.generation_config = model.generation_config
    student.save_pretrained(target)
    load_tokenizer(teacher, rules).save_pretrained(target)


def cheapest_block(teacher: torch.nn.Module, keep: int,
                   loss: Callable[[torch.nn.Module], float]) -> tuple[list[int], dict[int, float]]:
    """The layers kept when one contiguous block of the others is dropped: the block whose removal raises
    `loss` (of a candidate student, e.g. on training rows) least. The first and the last layer always stay.

    Which layers a model can spare differs by model and task, and guessing costs much: on the quickstart,
    keeping 20 of SmolLM2's 30 layers gives a held-out loss of 3.8 before training when layers 12-21 go and
    15.7 when every third goes (docs/tasks-lm.md). Returns the kept layers and each block start's loss.
    """
    count = teacher.config.num_hidden_layers
    if getattr(teacher.config, "layer_types", None) and len(set(teacher.config.layer_types)) > 1:
        raise ConfigError("distill.student_layers: a layer count needs a model whose layers are all alike; "
                          "give the layer indices to keep instead")
    if not 2 <= keep < count:
        raise ConfigError(f"distill.student_layers: expected a layer count from 2 to {count - 1} (the teacher has "
                          f"{count} layers, and the first and last stay), got {keep}")
    drop, state, student = count - keep, teacher.state_dict(), student_model(teacher, keep)
    costs = {}
    for start in range(1, count - drop):
        student.load_state_dict(renumbered(state, kept_without(count, start, drop)), strict=True)
        costs[start] = loss(student)
    best = min(costs, key=costs.__getitem__)
    return kept_without(count, best, drop), costs


def kept_without(count: int, start: int, drop: int) -> list[int]:
    return [i for i in range(count) if not start <= i < start + drop]
