"""The HTTP API: OpenAI's routes over the store, the worker and the inference engine.

Every route needs a valid key when the server has keys (401 otherwise) and sees only its caller's objects;
every error, ours or the framework's, answers in OpenAI's envelope.
"""

from __future__ import annotations

import itertools
import json
import sys
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.concurrency import run_in_threadpool

from tunelab.errors import ConfigError
from tunelab.serve import completions
from tunelab.serve.auth import Caller, authenticate
from tunelab.serve.catalog import Catalog
from tunelab.serve.errors import ApiError, bad_request
from tunelab.serve.files import Files
from tunelab.serve.inference import Engine
from tunelab.serve.jobs import RUN, Jobs, check_grader
from tunelab.serve.store import Store
from tunelab.serve.worker import Worker

DEFAULT_MAX_FILE_BYTES = 512 * 1024**2  # OpenAI's limit on one fine-tuning file


@dataclass
class ServeOptions:
    data_dir: Path
    keys: dict[str, Caller] = field(default_factory=dict)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    python_graders: bool = False
    max_loaded_models: int = 4
    models: dict[str, Path] = field(default_factory=dict)
    poll: float = 1.0
    batching: dict[str, Any] = field(default_factory=dict)  # Engine's max_adapters, max_batch, window_s
    job_nproc: int | None = None  # processes per job's run (tunelab run --nproc), e.g. one per GPU
    job_launcher: str = "torchrun"

    def run_args(self) -> list[str]:
        """What a job's `tunelab run` adds to spread over this machine's devices: the same launcher a user's
        `tunelab run --nproc N` goes through (tunelab.launch)."""
        return ["--nproc", str(self.job_nproc), "--launcher", self.job_launcher] if self.job_nproc else []


class Service:
    """The parts a request reaches, built over one data directory."""

    def __init__(self, options: ServeOptions):
        root = Path(options.data_dir)
        self.options = options
        self.store = Store(root / "serve.db")
        self.files = Files(self.store, root / "files", options.max_file_bytes)
        self.catalog = Catalog(self.store, options.models)
        self.worker: Worker | None = None  # built after the jobs, which wake it
        self.jobs = Jobs(self.store, self.files, self.catalog, root / "jobs", self.wake, options.python_graders)
        self.worker = Worker(self.jobs, options.poll, options.run_args())
        self.engine = Engine(options.max_loaded_models, **options.batching)

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def create_app(options: ServeOptions) -> FastAPI:
    service = Service(options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        yield
        await run_in_threadpool(service.worker.stop)
        service.store.close()

    app = FastAPI(title="tunelab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _errors(app)

    def caller(request: Request) -> Caller:
        return authenticate(options.keys, request.headers.get("authorization"))

    _file_routes(app, service, caller)
    _job_routes(app, service, caller)
    _model_routes(app, service, caller)
    _grader_routes(app, service, caller)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(bad_request(f"{where}: {first.get('msg', 'invalid')}", where or None).body(), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        words = f"Unknown request URL: {request.method} {request.url.path}" if err.status_code in (404, 405) \
            else str(err.detail)
        return JSONResponse(ApiError(err.status_code, words, code="unknown_url" if err.status_code in (404, 405)
                                     else None).body(), err.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        traceback.print_exception(err, file=sys.stderr)
        return JSONResponse(ApiError(500, f"The server had an error while processing your request: "
                                          f"{type(err).__name__}: {err}", type="server_error").body(), 500)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise bad_request("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("Expected a JSON object")
    return body


def _file_routes(app: FastAPI, s: Service, caller: Any) -> None:
    @app.post("/v1/files")
    async def upload(request: Request, who: Caller = Depends(caller)) -> Any:
        upload, fields = await s.files.receive(request)
        try:
            return await run_in_threadpool(s.files.create, who.owner, upload, fields)
        finally:
            await upload.close()

    @app.get("/v1/files")
    def list_files(after: str | None = None, limit: int = 10000, order: str = "desc", purpose: str | None = None,
                   who: Caller = Depends(caller)) -> Any:
        return s.files.list(who.owner, after, limit, order, purpose)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, who: Caller = Depends(caller)) -> Any:
        from tunelab.serve.files import render

        return render(s.files.get(who.owner, file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, who: Caller = Depends(caller)) -> Any:
        record = s.files.get(who.owner, file_id)
        return FileResponse(s.files.path(record), media_type="application/octet-stream", filename=record["filename"])

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, who: Caller = Depends(caller)) -> Any:
        return s.files.delete(who.owner, file_id)


def _job_routes(app: FastAPI, s: Service, caller: Any) -> None:
    base = "/v1/fine_tuning/jobs"

    @app.post(base)
    async def create_job(request: Request, who: Caller = Depends(caller)) -> Any:
        return await run_in_threadpool(s.jobs.create, who, await _json(request))

    @app.get(base)
    def list_jobs(request: Request, after: str | None = None, limit: int = 20, who: Caller = Depends(caller)) -> Any:
        metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                    if k.startswith("metadata[") and k.endswith("]")}
        return s.jobs.list(who, after, limit, metadata)

    @app.get(base + "/{job_id}")
    def get_job(job_id: str, who: Caller = Depends(caller)) -> Any:
        return s.jobs.get(who, job_id)["body"]

    @app.post(base + "/{job_id}/cancel")
    def cancel_job(job_id: str, who: Caller = Depends(caller)) -> Any:
        return s.jobs.cancel(who, job_id)

    @app.post(base + "/{job_id}/pause")
    def pause_job(job_id: str, who: Caller = Depends(caller)) -> Any:
        return s.jobs.pause(who, job_id)

    @app.post(base + "/{job_id}/resume")
    def resume_job(job_id: str, who: Caller = Depends(caller)) -> Any:
        return s.jobs.resume(who, job_id)

    @app.get(base + "/{job_id}/events")
    def job_events(job_id: str, after: str | None = None, limit: int = 20, who: Caller = Depends(caller)) -> Any:
        return s.jobs.events(who, job_id, after, limit)

    @app.get(base + "/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, after: str | None = None, limit: int = 10, who: Caller = Depends(caller)) -> Any:
        return s.jobs.checkpoints(who, job_id, after, limit)

    @app.get(base + "/{job_id}/tunelab/summary")
    def job_summary(job_id: str, who: Caller = Depends(caller)) -> Any:
        """The run's summary.json: before/after, baselines, forgetting, the fit diagnosis."""
        return _finished_run(s, who, job_id).read_summary()

    @app.get(base + "/{job_id}/tunelab/report")
    def job_report(job_id: str, who: Caller = Depends(caller)) -> Any:
        run = _finished_run(s, who, job_id)
        return HTMLResponse((run.path / "report.html").read_text(encoding="utf-8"))


def _finished_run(s: Service, who: Caller, job_id: str) -> Any:
    from tunelab.rundir import RunDir

    job = s.jobs.get(who, job_id)
    run = RunDir(s.jobs.folder(job) / RUN)
    if not run.finished() or not (run.path / "report.html").is_file():
        raise ApiError(409, f"Job {job_id} has no evidence yet: its run has not succeeded (status {job['status']})",
                       param="fine_tuning_job_id", code="run_not_finished")
    return run


def _model_routes(app: FastAPI, s: Service, caller: Any) -> None:
    @app.get("/v1/models")
    def list_models(who: Caller = Depends(caller)) -> Any:
        return {"object": "list", "data": s.catalog.listing(who.owner)}

    @app.get("/v1/models/{name:path}")
    def get_model(name: str, who: Caller = Depends(caller)) -> Any:
        return s.catalog.retrieve(who.owner, name)

    @app.delete("/v1/models/{name:path}")
    def delete_model(name: str, who: Caller = Depends(caller)) -> Any:
        return s.catalog.delete(who.owner, name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, who: Caller = Depends(caller)) -> Any:
        body = await _json(request)
        return await run_in_threadpool(_complete, s, who, body, completions.chat_request(body), True)

    @app.post("/v1/completions")
    async def text(request: Request, who: Caller = Depends(caller)) -> Any:
        body = await _json(request)
        return await run_in_threadpool(_complete, s, who, body, completions.text_request(body), False)


def _complete(s: Service, who: Caller, body: dict[str, Any], generation: Any, chat: bool) -> Any:
    """The answer, whole or streamed; the model loads and the first piece is generated before the response
    starts, so a failure still answers with an error status."""
    name = body.get("model")
    target = s.catalog.resolve(who.owner, name, s.jobs.root)
    pieces = s.engine.stream(target, generation)
    first = next(pieces)
    pieces = itertools.chain([first], pieces)
    if not body.get("stream"):
        return completions.whole(pieces, name, chat)
    return StreamingResponse(completions.events(pieces, name, chat, completions.wants_usage(body)),
                             media_type="text/event-stream")


def _grader_routes(app: FastAPI, s: Service, caller: Any) -> None:
    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def validate_grader(request: Request, who: Caller = Depends(caller)) -> Any:
        body = await _json(request)
        check_grader(body.get("grader"), s.options.python_graders, "grader")
        return {"grader": body["grader"]}

    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def run_grader(request: Request, who: Caller = Depends(caller)) -> Any:
        body = await _json(request)
        check_grader(body.get("grader"), s.options.python_graders, "grader")
        sample = body.get("model_sample")
        if not isinstance(sample, str):
            raise bad_request("model_sample: expected the model's answer as a string", "model_sample")
        return await run_in_threadpool(_grade, body["grader"], sample, body.get("item") or {},
                                       s.options.python_graders)


def _grade(spec: dict[str, Any], sample: str, item: Any, allow_python: bool) -> dict[str, Any]:
    """One sample graded, in OpenAI's run-grader shape (tunelab.graders answers in it); a sample or item the grader
    cannot read is the caller's 400."""
    from tunelab.graders import run_grader

    try:
        return run_grader(spec, {"output_text": sample}, item, allow_python=allow_python)
    except ConfigError as err:
        raise bad_request(str(err), "item", "invalid_grader_input") from None
