"""Fine-tuning jobs as the API sees them: created from a request (files checked, hyperparameters resolved, the
run's config written and validated), listed, read, cancelled, paused and resumed. The worker (`serve.worker`)
moves them along; this module never starts a process.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import ConfigError
from tunelab.serve import hyper
from tunelab.serve.auth import Caller
from tunelab.serve.catalog import Catalog
from tunelab.serve.datacheck import check_file
from tunelab.serve.errors import ApiError, bad_request, not_found
from tunelab.serve.files import Files
from tunelab.serve.store import Store, new_id, now, page

SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
METHODS = ("supervised", "dpo", "reinforcement")
ACTIVE = ("validating_files", "queued", "running", "pausing", "paused")
TRAINING, VALIDATION, CONFIG, RUN = "training.jsonl", "validation.jsonl", "job.yaml", "run"
EVAL_FRACTION = 0.1  # tunelab's data.eval_fraction: held out of train when no validation file is given


class Jobs:
    def __init__(self, store: Store, files: Files, catalog: Catalog, root: Path, wake: Any,
                 python_graders: bool = False):
        self.store, self.files, self.catalog, self.root, self.wake = store, files, catalog, Path(root), wake
        self.python_graders = python_graders
        self.root.mkdir(parents=True, exist_ok=True)

    # creating
    def create(self, caller: Caller, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise bad_request("Expected a JSON object with model and training_file")
        _refuse_unknown(request)
        if _need_str(request, "model").startswith("ft:"):
            raise bad_request("model: fine-tuning a fine-tuned model further is not supported yet; start from its base "
                              "model", "model", "model_not_available")
        base = self.catalog.base(request["model"])
        method, given, extension, grader = _method(request)
        if grader is not None:
            check_grader(grader, self.python_graders, "method.reinforcement.grader")
        training = self._fine_tune_file(caller.owner, _need_str(request, "training_file"), "training_file")
        validation = request.get("validation_file")
        validation = self._fine_tune_file(caller.owner, validation, "validation_file") if validation else None
        if method == "reinforcement" and validation is None:
            raise bad_request("A reinforcement job requires a validation_file (its prompts measure the reward)",
                              "validation_file", "missing_required_parameter")
        seed = _seed(request.get("seed"))
        workdir = secrets.token_hex(8)
        folder = self.root / workdir
        folder.mkdir()
        try:
            spec, hp = self._prepare(folder, base, method, given, extension, grader, training, validation, seed)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        body = self._body(caller, request, method, hp, seed, extension, grader)
        self.store.add_job(caller.owner, body, workdir, {**spec, "org": caller.org},
                           [{"level": "info", "message": f"Created fine-tuning job: {body['id']}"},
                            {"level": "info", "message": f"Validating training file: {training['id']}"
                             + (f" and validation file: {validation['id']}" if validation else "")}])
        self.wake()
        return body

    def _fine_tune_file(self, owner: str, file_id: Any, param: str) -> dict[str, Any]:
        if not isinstance(file_id, str):
            raise bad_request(f"{param}: expected a file id", param)
        record = self.store.file(owner, file_id)
        if record is None:
            raise ApiError(400, f"invalid {param}: no such file: {file_id}", param=param, code="file_not_found")
        if record["purpose"] != "fine-tune":
            raise bad_request(f"File {file_id} has purpose {record['purpose']!r}; a fine-tuning job reads files "
                              "uploaded with purpose fine-tune", param, f"invalid_{param}")
        return record

    def _prepare(self, folder: Path, base: str, method: str, given: dict[str, Any], extension: dict[str, Any],
                 grader: Any, training: dict[str, Any], validation: dict[str, Any] | None,
                 seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job's folder: its copies of the files, checked for the method, and the run's config."""
        _link(self.files.path(training), folder / TRAINING)
        found = check_file(folder / TRAINING, method, "training_file", training["filename"])
        if validation is not None:
            _link(self.files.path(validation), folder / VALIDATION)
            check_file(folder / VALIDATION, method, "validation_file", validation["filename"])
        n_train = found.rows if validation else found.rows - max(1, round(found.rows * EVAL_FRACTION))
        hp = hyper.resolve(method, given, n_train)
        data = {"train": TRAINING, "eval": VALIDATION if validation else None}  # reinforcement rows are prompt rows
        settings = hyper.run_settings(method, hp, seed, n_train, default_rate(extension), grader, self.python_graders)
        config = write_config(folder, base, {**settings, **extension}, data)
        return {"method": method, "task": config["task"], "tunelab_method": config["method"], "rows": found.rows,
                "warnings": found.warnings, "short_id": secrets.token_hex(4)}, hp

    def _body(self, caller: Caller, request: dict[str, Any], method: str, hp: dict[str, Any], seed: int,
              extension: dict[str, Any], grader: Any) -> dict[str, Any]:
        shown = {"hyperparameters": hp, **({"grader": grader} if grader is not None else {})}
        return {"id": new_id("ftjob"), "object": "fine_tuning.job", "created_at": now(), "model": request["model"],
                "organization_id": f"org-{caller.org}", "training_file": request["training_file"],
                "validation_file": request.get("validation_file"), "status": "validating_files", "seed": seed,
                "hyperparameters": {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
                "method": {"type": method, method: shown, **({"tunelab": extension} if extension else {})},
                "metadata": _metadata(request.get("metadata")), "user_provided_suffix": request.get("suffix"),
                "result_files": [], "trained_tokens": None, "fine_tuned_model": None, "finished_at": None,
                "estimated_finish": None, "error": None, "integrations": []}

    # reading
    def get(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = self.store.job(job_id, caller.owner)
        if job is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id", "fine_tuning_job_not_found")
        return job

    def list(self, caller: Caller, after: str | None, limit: int, metadata: dict[str, str]) -> dict[str, Any]:
        _check_limit(limit)
        sql, args = "SELECT * FROM jobs WHERE owner = ?", [caller.owner]
        if after:
            anchor = self.store.one("SELECT rowid FROM jobs WHERE id = ? AND owner = ?", (after, caller.owner))
            if anchor is None:
                raise not_found("fine-tuning job", after, "after", "fine_tuning_job_not_found")
            sql, args = sql + " AND rowid < ?", [*args, anchor["rowid"]]
        bodies = [json.loads(r["body"]) for r in self.store.all(sql + " ORDER BY rowid DESC", tuple(args))]
        bodies = [b for b in bodies if all((b.get("metadata") or {}).get(k) == v for k, v in metadata.items())]
        rows, more = bodies[:limit], len(bodies) > limit
        return {"object": "list", "data": rows, "has_more": more}

    def events(self, caller: Caller, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        _check_limit(limit)
        self.get(caller, job_id)
        rows, more = page(self.store.events(job_id, after, limit + 1), limit)
        return {"object": "list", "has_more": more, "data": [
            {"id": r["id"], "object": "fine_tuning.job.event", "created_at": r["created_at"], "level": r["level"],
             "message": r["message"], "type": r["type"], "data": json.loads(r["data"]) if r["data"] else {}}
            for r in rows]}

    def checkpoints(self, caller: Caller, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first; each one's metrics as the run's metrics.jsonl has them now (a validation at the step of a
        checkpoint is logged after it is saved)."""
        from tunelab.rundir import RunDir
        from tunelab.serve.observe import checkpoint_metrics

        _check_limit(limit)
        run = RunDir(self.folder(self.get(caller, job_id)) / RUN)
        rows = self.store.checkpoints(job_id)
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        data = [{"id": r["id"], "object": "fine_tuning.job.checkpoint", "created_at": r["created_at"],
                 "fine_tuned_model_checkpoint": r["model"], "fine_tuning_job_id": job_id,
                 "step_number": r["step_number"],
                 "metrics": checkpoint_metrics(run, r["step_number"]) if run.metrics_path.is_file() else r["metrics"]}
                for r in rows[:limit]]
        return {"object": "list", "data": data, "has_more": len(rows) > limit,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    # changing
    def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = self.get(caller, job_id)
        if job["status"] not in ACTIVE:
            raise bad_request(f"Job {job_id} has already {job['status']}; only an unfinished job can be cancelled",
                              "fine_tuning_job_id", "invalid_job_state")
        done = {"finished_at": now(), "estimated_finish": None} if job["pid"] is None else {}
        updated = self.store.update_job(job_id, {"status": "cancelled", **done}, requested="cancel",
                                        extra=self.store.event_statements(job_id, [
                                            {"level": "info", "message": "Job cancellation requested"
                                             if job["pid"] else "Job cancelled"}]))
        self.wake()
        return updated["body"]

    def pause(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = self.get(caller, job_id)
        if job["status"] not in ("queued", "running"):
            raise bad_request(f"Job {job_id} is {job['status']}; only a queued or running job can be paused",
                              "fine_tuning_job_id", "invalid_job_state")
        status = "pausing" if job["pid"] is not None else "paused"
        updated = self.store.update_job(job_id, {"status": status, "estimated_finish": None}, requested="pause",
                                        extra=self.store.event_statements(job_id, [
                                            {"level": "info", "message": "Job pause requested: the run stops at its "
                                             "next step and keeps a checkpoint" if status == "pausing" else
                                             "Job paused"}]))
        self.wake()
        return updated["body"]

    def resume(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = self.get(caller, job_id)
        if job["status"] != "paused":
            raise bad_request(f"Job {job_id} is {job['status']}; only a paused job can be resumed",
                              "fine_tuning_job_id", "invalid_job_state")
        updated = self.store.update_job(job_id, {"status": "queued"}, requested=None,
                                        extra=self.store.event_statements(job_id, [
                                            {"level": "info", "message": "Job resumed: queued to continue from its "
                                             "last checkpoint"}]))
        self.wake()
        return updated["body"]

    def folder(self, job: dict[str, Any]) -> Path:
        return self.root / job["workdir"]


def default_rate(extension: dict[str, Any]) -> float:
    """The learning rate a multiplier of 1 means: the default of the method the job tunes with."""
    from tunelab.methods import METHODS

    chosen = extension.get("method", "lora")
    if chosen not in METHODS:
        raise bad_request(f'method.tunelab.method: expected one of {"|".join(sorted(METHODS))}, got {chosen!r}',
                          "method.tunelab.method")
    return METHODS[chosen].default_learning_rate


def write_config(folder: Path, base: str, settings: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """job.yaml: the `tunelab run` config the job starts, validated now so a bad setting is the client's 400."""
    from tunelab.config import validate_config

    raw: dict[str, Any] = {"name": "job", "model": base, "method": settings.get("method", "lora"),
                           "output_dir": str(folder / RUN), "data": {k: str(folder / v) for k, v in data.items() if v}}
    for key, value in settings.items():
        _set(raw, key, value)
    try:
        validate_config(json.loads(json.dumps(raw)))
    except ConfigError as err:
        raise bad_request(f"The job's tunelab settings are refused: {err}", "method.tunelab",
                          "invalid_hyperparameters") from None
    text = yaml.safe_dump(raw, sort_keys=False)
    (folder / CONFIG).write_text(text, encoding="utf-8")
    return raw


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    *sections, name = key.split(".")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise bad_request(f'method.tunelab.{key}: "{part}" is not a section', f"method.tunelab.{key}")
    node[name] = value


def check_grader(spec: Any, python_allowed: bool, param: str) -> None:
    """A grader the server can run: tunelab.graders' own validation (OpenAI's rules, and what this machine can
    run), and python graders only where the server allows them."""
    from tunelab.graders import check_grader as validate, python_paths

    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise bad_request(f'{param}: expected a grader object with a "type"', param)
    try:
        validate(spec, param)
    except ConfigError as err:
        raise bad_request(str(err), param, "invalid_grader") from None
    found = python_paths(spec, param)
    if found and not python_allowed:
        raise ApiError(403, f"{found[0]}: python graders run the caller's code and are off on this server "
                            "(tunelab serve --allow-python-graders turns them on)", param=param,
                       code="python_grader_disabled")


def _method(request: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], Any]:
    """(type, hyperparameters as given, tunelab extension, grader) from `method` or the legacy `hyperparameters`."""
    method = request.get("method")
    legacy = request.get("hyperparameters")
    if method is None:
        return "supervised", hyper.checked_numbers(legacy or {}, "supervised"), {}, None
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        raise bad_request(f"method.type: expected one of {', '.join(METHODS)}", "method.type")
    kind = method["type"]
    own = method.get(kind) or {}
    if not isinstance(own, dict):
        raise bad_request(f"method.{kind}: expected an object", f"method.{kind}")
    given = hyper.checked_numbers({**(legacy or {}), **(own.get("hyperparameters") or {})}, kind)
    grader = own.get("grader")
    if kind == "reinforcement" and grader is None:
        raise bad_request("method.reinforcement.grader: a reinforcement job needs a grader",
                          "method.reinforcement.grader", "missing_required_parameter")
    return kind, given, hyper.extension(method.get("tunelab")), grader


KNOWN = ("model", "training_file", "validation_file", "suffix", "seed", "metadata", "method", "hyperparameters",
         "integrations")


def _refuse_unknown(request: dict[str, Any]) -> None:
    for key in request:
        if key not in KNOWN:
            raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    if request.get("integrations"):
        raise bad_request("integrations (Weights and Biases) are not supported: tunelab runs offline; the job's "
                          "events, checkpoints and report hold its metrics", "integrations")
    suffix = request.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise bad_request(f"suffix: expected up to 64 letters, digits, '.', '_' or '-', got {suffix!r}", "suffix")


def _need_str(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"Missing required parameter: '{key}'", key, "missing_required_parameter")
    return value


def _seed(value: Any) -> int:
    if value is None:
        return random.SystemRandom().randrange(2**31)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise bad_request(f"seed: expected an integer from 0 to {2**31 - 1}, got {value!r}", "seed")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise bad_request("metadata: expected an object of at most 16 pairs", "metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise bad_request(f"metadata.{key}: keys are at most 64 characters and values strings of at most 512",
                              "metadata")
    return dict(value)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise bad_request(f"limit: expected 1 to 100, got {limit}", "limit")


def _link(source: Path, target: Path) -> None:
    """The job's own copy of an uploaded file (a hard link where the disk allows): deleting the upload later
    leaves the job its data."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
