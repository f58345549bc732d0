"""Models a caller may name: the bundled causal LMs (and any `--model NAME=DIR` the server was given), its own
fine-tuned `ft:` models and their `ft:...:ckpt-step-N` checkpoints. A name is resolved within the caller's own
models only, so another key's `ft:` name answers as an unknown one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.serve.errors import ApiError, not_found
from tunelab.serve.store import Store

CREATED = int(time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, 0)))  # bundled models have no creation time of their own


@dataclass(frozen=True)
class Target:
    """What inference loads: a base model, or a run's tuned model, or one of its checkpoints (`weights`)."""

    name: str          # the name the client used
    base: str          # a bundled alias or a model directory
    run_dir: Path | None = None
    weights: Path | None = None  # a checkpoint's model files; None: the run's final model

    @property
    def key(self) -> str:
        return f"{self.base}|{self.run_dir}|{self.weights}"


class Catalog:
    def __init__(self, store: Store, extra: dict[str, Path] | None = None):
        self.store, self.extra = store, dict(extra or {})

    def bases(self) -> dict[str, str]:
        """Base model names -> what `models.resolve_model` takes."""
        from tunelab.models import BUNDLED

        found = {name: name for name, m in BUNDLED.items() if m.kind == "causal-lm"}
        found.update({name: str(path) for name, path in self.extra.items()})
        return found

    def base(self, name: str, param: str = "model") -> str:
        found = self.bases().get(name)
        if found is None:
            raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", param=param,
                           code="model_not_found")
        return found

    def resolve(self, owner: str, name: str, jobs_dir: Path) -> Target:
        """The target a request names, within this caller's models."""
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model: expected a model name", param="model", code="missing_required_parameter")
        if not name.startswith("ft:"):
            return Target(name, self.base(name))
        checkpoint = self.store.checkpoint_by_model(owner, name)
        if checkpoint is not None:
            job = self.store.job(checkpoint["job_id"], owner)
            return Target(name, self.base(job["body"]["model"]), run_dir(job, jobs_dir), Path(checkpoint["path"]))
        model = self.store.model(owner, name)
        if model is None:
            raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", param="model",
                           code="model_not_found")
        job = self.store.job(model["job_id"], owner)
        return Target(name, self.base(model["base"]), run_dir(job, jobs_dir))

    def listing(self, owner: str) -> list[dict[str, Any]]:
        bases = [render(name, CREATED, "tunelab", None) for name in self.bases()]
        tuned = [render(m["id"], m["created_at"], m["org"], m["base"]) for m in self.store.models(owner)]
        return bases + tuned

    def retrieve(self, owner: str, name: str) -> dict[str, Any]:
        if name in self.bases():
            return render(name, CREATED, "tunelab", None)
        model = self.store.model(owner, name)
        if model is None:
            raise not_found("model", name, "model", "model_not_found")
        return render(model["id"], model["created_at"], model["org"], model["base"])

    def delete(self, owner: str, name: str) -> dict[str, Any]:
        if name in self.bases():
            raise ApiError(403, f"The model `{name}` is a base model; only fine-tuned models can be deleted",
                           param="model", code="model_not_deletable")
        if self.store.model(owner, name) is None:
            raise not_found("model", name, "model", "model_not_found")
        self.store.write([("DELETE FROM models WHERE owner = ? AND id = ?", (owner, name))])
        return {"id": name, "object": "model", "deleted": True}


def run_dir(job: dict[str, Any], jobs_dir: Path) -> Path:
    return jobs_dir / job["workdir"] / "run"


def render(name: str, created: int, owned_by: str, parent: str | None) -> dict[str, Any]:
    """OpenAI's model object, with `parent` and `root` (the base a fine-tuned model was trained from)."""
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by, "parent": parent,
            "root": parent or name}
