"""The worker: one thread that moves jobs along, one run at a time per device.

A queued job starts as a normal `tunelab run` of the job's config in a subprocess of its own session (its own
process group, so a cancel or pause reaches the run and whatever it started, and a server killed with -9 leaves
it running). The worker reads the run only through its run directory (status.json, events.jsonl,
checkpoints), so a restarted server takes over a run its predecessor started: on every tick it reconciles each
job that has a process with what that process left. A run that stopped without being asked to (a crash, a
power cut, the server stopping) is queued again and resumes from its newest complete checkpoint, up to
MAX_RESTARTS times; after that the job fails with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.rundir import RunDir, process_alive, process_start
from tunelab.serve import observe
from tunelab.serve.store import now

MAX_RESTARTS = 3
CANCEL_GRACE = 120.0  # seconds a cancelled run has to finish its step before it is killed
EXPIRE_EVERY = 60.0


def run_argv(config: Path, extra: Sequence[str] = ()) -> list[str]:
    """The command a job runs: `tunelab run CONFIG` with this interpreter. The one place that builds it, so a
    launcher that spreads a run over several processes (`--nproc`) changes only this."""
    return [sys.executable, "-m", "tunelab.cli", "run", str(config), *extra]


class Worker:
    def __init__(self, jobs: Any, poll: float = 1.0, run_args: Sequence[str] = ()):
        self.jobs, self.store, self.files = jobs, jobs.store, jobs.files
        self.poll, self.run_args = poll, tuple(run_args)
        self.children: dict[str, subprocess.Popen] = {}
        self.signalled: dict[str, float] = {}
        self.wakeup, self.stopped = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None
        self.last_expiry = 0.0

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="tunelab-serve-worker", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self.wakeup.set()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the worker outlives one job's surprise; it is printed for the operator
                traceback.print_exc()
            self.wakeup.wait(self.poll)
            self.wakeup.clear()

    def tick(self) -> None:
        if time.monotonic() - self.last_expiry > EXPIRE_EVERY:
            self.files.expire()
            self.last_expiry = time.monotonic()
        for job in self.store.jobs_in(("validating_files",)):
            self.validate(job)
        for job in self.store.all("SELECT id FROM jobs WHERE pid IS NOT NULL ORDER BY rowid"):
            self.observe(self.store.job(job["id"]))
        for job in self.store.all("SELECT id FROM jobs WHERE pid IS NULL AND status IN ('running', 'pausing')"):
            self.requeue(self.store.job(job["id"]), "the server lost track of the run", count=True)
        if not self.store.one("SELECT id FROM jobs WHERE pid IS NOT NULL"):
            queued = self.store.jobs_in(("queued",))
            if queued:
                self.launch(queued[0])

    # validating_files -> queued
    def validate(self, job: dict[str, Any]) -> None:
        """The rows measured with the base model's tokenizer (`tunelab data check`): what would be cut or repeats
        an earlier row is said in the job's events before it queues."""
        folder = self.jobs.folder(job)
        events = [{"level": "warn", "message": w} for w in job["spec"].get("warnings", [])[:20]]
        try:
            events += token_warnings(folder, job)
        except Exception as err:  # noqa: BLE001 - a tokenizer that cannot load fails the job with its reason
            self.finish(job, "failed", error={"code": "invalid_training_file", "param": "training_file",
                                              "message": f"cannot measure the rows: {err}"})
            return
        events.append({"level": "info", "message": "Files validated, moving job to queued state"})
        current = self.store.job(job["id"])
        if current["status"] == "validating_files":
            self.store.update_job(job["id"], {"status": "queued"}, extra=self.store.event_statements(job["id"], events))

    # queued -> running
    def launch(self, job: dict[str, Any]) -> None:
        from tunelab.serve.jobs import CONFIG

        folder = self.jobs.folder(job)
        with open(folder / "run.log", "ab") as log:
            proc = subprocess.Popen(run_argv(folder / CONFIG, self.run_args), cwd=folder, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.children[job["id"]] = proc
        resumed = RunDir(folder / "run").read_status() is not None
        words = "Fine-tuning job resumed: the run continues from its last checkpoint" if resumed else \
            "Fine-tuning job started"
        self.store.update_job(job["id"], {"status": "running"}, pid=proc.pid, process_start=process_start(proc.pid),
                              extra=self.store.event_statements(job["id"], [{"level": "info", "message": words}]))

    # running -> succeeded | failed | cancelled | paused | queued again
    def observe(self, job: dict[str, Any]) -> None:
        folder = self.jobs.folder(job)
        job, _ = observe.ingest(self.store, job, folder)
        if self.alive(job):
            self.steer(job, folder)
            return
        self.children.pop(job["id"], None)
        self.signalled.pop(job["id"], None)
        job, _ = observe.ingest(self.store, self.store.job(job["id"]), folder)  # what it wrote before it ended
        run = RunDir(folder / "run")
        state, requested = run.state(), job["requested"]
        if requested == "cancel":
            self.finish(job, "cancelled", words="Job cancelled")
        elif state == "succeeded":
            self.succeed(job, run)
        elif requested == "pause":
            self.store.update_job(job["id"], {"status": "paused"}, pid=None,
                                  extra=self.store.event_statements(job["id"], [{"level": "info", "message":
                                                                                 "Job paused"}]))
        elif state == "failed":
            self.finish(job, "failed", error=observe.failure(run.read_status(), observe.log_tail(folder / "run.log")))
        elif requested == "restart":
            self.requeue(job, "the server stopped", count=False)
        else:
            self.requeue(job, f"the run stopped unexpectedly ({state or 'no status written'})", count=True)

    def alive(self, job: dict[str, Any]) -> bool:
        child = self.children.get(job["id"])
        if child is not None:
            return child.poll() is None
        return process_alive(job["pid"], job["process_start"])  # a run an earlier server started

    def steer(self, job: dict[str, Any], folder: Path) -> None:
        """Pass on a cancel or pause (SIGTERM: the run finishes its step and keeps a checkpoint), kill a cancelled
        run that does not stop, and keep the estimated finish current."""
        if job["requested"] in ("cancel", "pause", "restart"):
            if job["id"] not in self.signalled:
                self.signalled[job["id"]] = time.monotonic()
                self.signal(job, signal.SIGTERM)
            elif job["requested"] == "cancel" and time.monotonic() - self.signalled[job["id"]] > CANCEL_GRACE:
                self.signal(job, signal.SIGKILL)
            return
        estimate = estimated_finish(RunDir(folder / "run").read_status())
        if estimate is not None and abs((job["body"].get("estimated_finish") or 0) - estimate) > 5:
            self.store.update_job(job["id"], {"estimated_finish": estimate})

    def signal(self, job: dict[str, Any], sig: int) -> None:
        if not self.alive(job):
            return
        try:
            os.killpg(job["pid"], sig)
        except (ProcessLookupError, PermissionError):
            pass

    def requeue(self, job: dict[str, Any], why: str, count: bool) -> None:
        if count and job["attempts"] + 1 >= MAX_RESTARTS:
            tail = observe.log_tail(self.jobs.folder(job) / "run.log")
            self.finish(job, "failed", error={"code": "server_error", "param": None, "message":
                                              f"{why}, {MAX_RESTARTS} times; the run's last words: {tail or 'none'}"})
            return
        self.store.update_job(job["id"], {"status": "queued", "estimated_finish": None}, pid=None, requested=None,
                              attempts=job["attempts"] + int(count),
                              extra=self.store.event_statements(job["id"], [
                                  {"level": "warn", "message": f"{why}: the job is queued again and resumes from "
                                                               "its last checkpoint"}]))

    def finish(self, job: dict[str, Any], status: str, error: dict[str, Any] | None = None,
               words: str | None = None) -> None:
        message = words or f"Fine-tuning job failed: {error['message'] if error else status}"
        self.store.update_job(job["id"], {"status": status, "error": error, "finished_at": now(),
                                          "estimated_finish": None}, pid=None,
                              extra=self.store.event_statements(job["id"], [
                                  {"level": "error" if status == "failed" else "info", "message": message}]))

    def succeed(self, job: dict[str, Any], run: RunDir) -> None:
        summary = run.read_summary() or {}
        csv_id = self.files.add_result(job["owner"], "step_metrics.csv", observe.results_csv(run))
        name = observe.model_name(job)
        model = {"id": name, "owner": job["owner"], "created_at": now(), "job_id": job["id"],
                 "base": job["body"]["model"], "org": job["spec"]["org"]}
        events = [{"level": "info", "message": f"New fine-tuned model created: {name}"},
                  *evidence_events(summary, job["id"]),
                  {"level": "info", "message": "The job has successfully completed"}]
        self.store.update_job(job["id"], {"status": "succeeded", "fine_tuned_model": name, "finished_at": now(),
                                          "trained_tokens": (summary.get("train") or {}).get("tokens"),
                                          "result_files": [csv_id], "estimated_finish": None}, pid=None,
                              extra=[self.store.model_statement(model),
                                     *self.store.event_statements(job["id"], events)])

    def stop(self, grace: float = 20.0) -> None:
        """The server is stopping: each run is asked to stop at a checkpoint (the next start resumes it)."""
        self.stopped.set()
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        active = [self.store.job(r["id"]) for r in self.store.all("SELECT id FROM jobs WHERE pid IS NOT NULL")]
        for job in active:
            if self.alive(job):
                if job["requested"] is None:
                    job = self.store.update_job(job["id"], requested="restart")
                self.signal(job, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(self.alive(j) for j in active):
            time.sleep(0.2)


def estimated_finish(status: dict[str, Any] | None) -> int | None:
    """When the run will finish at its pace so far: its steps done against its steps to do."""
    if not status or not status.get("step") or not status.get("max_steps"):
        return None
    elapsed = time.time() - float(status["started_at"])
    return int(time.time() + elapsed * (status["max_steps"] - status["step"]) / status["step"])


def evidence_events(summary: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    """The run's before/after numbers on held-out rows, so the job's events say whether the tune helped."""
    before, after = summary.get("before") or {}, summary.get("after") or {}
    shown = [m for m in summary.get("metrics") or [] if m in before and m in after][:3]
    if not shown:
        return []
    parts = ", ".join(f"{m} {before[m]:.4g} -> {after[m]:.4g}" for m in shown)
    return [{"level": "info", "message": f"Held-out evidence (before -> after tuning): {parts}; the full report: "
                                         f"GET /v1/fine_tuning/jobs/{job_id}/tunelab/report",
             "data": {"before": before, "after": after}}]


def token_warnings(folder: Path, job: dict[str, Any]) -> list[dict[str, Any]]:
    """`tunelab data check` of the training rows with the base model's tokenizer, as warnings."""
    import yaml

    from tunelab.data.check import check_file, load_tokenizer

    config = yaml.safe_load((folder / "job.yaml").read_text(encoding="utf-8"))
    max_length = (config.get("train") or {}).get("max_length", 512)
    report = check_file(Path(config["data"]["train"]), load_tokenizer(config["model"]), max_length=max_length)
    kinds = report.kinds()
    words = {"too_long": f"longer than max_length={max_length} tokens: their answers are cut",
             "duplicate": "exact duplicates of an earlier row", "near_duplicate": "near-duplicates of an earlier row"}
    return [{"level": "warn", "message": f"{kinds[k]} training example(s) are {w} (tunelab data check lists them)"}
            for k, w in words.items() if kinds[k]]
