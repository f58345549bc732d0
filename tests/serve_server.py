"""`tunelab serve` as a real subprocess on a free loopback port, for the service's tests, and the checks that
every answer parses into the pinned openai SDK's own types."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
KEYS = {"alice": "alice-key-00000001", "bob": "bob-key-000000002"}
# Fields OpenAI's API returns beyond the SDK's types (the job's suffix), and tunelab's documented additions.
EXTRA_FIELDS = {"FineTuningJob": {"user_provided_suffix"}, "Method": {"tunelab"}, "Model": {"parent", "root"}}
PAUSE_STATUSES = ("pausing", "paused")  # OpenAI's pause statuses, not yet in the SDK's Literal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `tunelab serve` process over a data directory; `start` again after `kill` is a restart."""

    def __init__(self, data_dir: Path, *args: str, keys: bool = True):
        self.data_dir, self.args, self.keys = data_dir, args, keys
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
        if workers:  # the server's runs get this worker's share of the cores, as tests/conftest.py gives torch
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        if self.keys:
            env["TUNELAB_API_KEYS"] = f"{KEYS['alice']},acme={KEYS['bob']}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(self.port),
                                          "--data-dir", str(self.data_dir), *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"tunelab serve exited: {self.log.read_text()[-2000:]}"
            try:
                httpx2.get(f"{self.url}/models", timeout=2)
                return self
            except httpx2.TransportError:
                time.sleep(0.25)
        raise AssertionError(f"tunelab serve did not answer in 120 s: {self.log.read_text()[-2000:]}")

    def client(self, who: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=KEYS.get(who, who), max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def strict(obj: Any) -> Any:
    """Validate an SDK object as its type demands (the SDK itself builds them without validating), and refuse
    fields its type lacks, except the documented ones; returns obj."""
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    kind = type(obj)
    if getattr(obj, "status", None) in PAUSE_STATUSES and kind.__name__ == "FineTuningJob":
        data = {**data, "status": "running"}
    _no_surprises(kind.model_validate(data))
    return obj


def _no_surprises(model: BaseModel) -> None:
    extra = set(model.model_extra or {}) - EXTRA_FIELDS.get(type(model).__name__, set())
    assert not extra, f"{type(model).__name__} carries fields its SDK type lacks: {sorted(extra)}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                _no_surprises(item)


def error_of(err: openai.APIStatusError) -> dict[str, Any]:
    """The error object of a refused request, checked to be OpenAI's envelope."""
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def wait_for(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return strict(job)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s, waiting for {statuses}")


# Settings that keep a tiny-model job to seconds of work: few steps, a checkpoint every 2, short answers, no
# few-shot baseline, probe or train sample (tunelab's own tests cover those).
QUICK = {"train.max_steps": 4, "train.save_steps": 2, "train.max_length": 64, "eval.max_new_tokens": 4,
         "eval.max_examples": 2, "eval.few_shot_k": 0, "eval.forgetting_probe": False, "eval.train_sample": 0}


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(n)]


def dpo_rows(n: int) -> list[dict[str, Any]]:
    return [{"input": {"messages": [{"role": "user", "content": f"Greet person {i}."}]},
             "preferred_output": [{"role": "assistant", "content": f"Hello, person {i}!"}],
             "non_preferred_output": [{"role": "assistant", "content": "Go away."}]} for i in range(n)]
