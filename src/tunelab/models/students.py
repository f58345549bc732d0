"""Students built from a teacher: the same model with a subset of its decoder layers, each initialised
from the teacher layer it keeps (DistilBERT-style), saved once to the cache like a bundled model."""

from __future__ import annotations

import copy
import hashlib
import json
import re
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


def build_student(teacher: Path, layers: list[int], rules: LoadRules, target: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = load_model(teacher, ModelSpec("causal_lm"), rules)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding/full) follow their layers
        config.layer_types = [config.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=rules.trust_remote_code)
    try:
        student.load_state_dict(renumbered(model.state_dict(), layers), strict=True)
    except RuntimeError as err:
        raise ModelError(f"{teacher}: cannot keep a subset of this model's layers "
                         f"({str(err).splitlines()[0][:160]}); give the student as model= instead") from None
    student.generation_config = model.generation_config
    student.save_pretrained(target)
    load_tokenizer(teacher, rules).save_pretrained(target)
