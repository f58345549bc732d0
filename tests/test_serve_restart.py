"""Restart safety, on one job: `kill -9` the server while it trains and start it again: the job carries on; stop
the server cleanly: the run stops at a checkpoint, and the next start resumes it; then a power cut (the server
and the run both killed) and a restart: the job resumes from its last checkpoint and trains on (then it is
cancelled: it is long enough that no restart can race its end). Every uploaded file and every
earlier event is still there. About 100 s on 2 cores (four server starts, three run starts): the longest test of
the service, one test doing what each restart needs."""

from __future__ import annotations

import os
import signal
import time

from tests.serve_server import QUICK, Server, chat_rows, strict, wait_for, write_jsonl
from tunelab.rundir import RunDir, process_alive


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)


def test_kill_9_mid_job_then_restart(tmp_path):
    server = Server(tmp_path / "data").start()
    try:
        client = server.client()
        uploads = [client.files.create(file=open(write_jsonl(tmp_path / f"t{i}.jsonl", chat_rows(12 + i)), "rb"),
                                       purpose="fine-tune") for i in range(2)]
        job = client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=uploads[0].id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}},
            "tunelab": {**QUICK, "train.max_steps": 100_000, "train.save_steps": 10}})  # outlasts every restart
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 240, "a first checkpoint")
        server.kill()  # the server alone: its run, in a session of its own, keeps training
        run = RunDir(next((tmp_path / "data" / "jobs").iterdir()) / "run")
        status = run.read_status()
        assert process_alive(status["pid"], status["process_start"])

        server.start()
        client = server.client()
        before = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]  # every page
        assert strict(client.fine_tuning.jobs.retrieve(job.id)).status == "running"
        wait_until(lambda: client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].id != before[0], 60,
                   "the adopted run's new events")

        server.stop()  # a clean stop (SIGTERM): the run is asked to stop at a checkpoint
        assert run.state() == "interrupted"
        stopped_at = run.read_status()["step"]
        server.start()
        client = server.client()
        wait_until(lambda: (run.read_status()["step"] or 0) > stopped_at and run.state() == "running", 120,
                   "the run to go on after the clean restart")

        server.kill()  # now a power cut: the run dies too, mid-training
        os.killpg(run.read_status()["pid"], signal.SIGKILL)
        wait_until(lambda: run.state() == "dead", 30, "the run's status to read dead")
        server.start()
        client = server.client()
        # taken over after the power cut: the run resumes from its last checkpoint and trains on
        wait_until(lambda: len([e for e in run.read_events() if e.kind == "resumed"]) == 2
                   and run.state() == "running", 120, "the run to resume after the power cut")
        cut_at = run.read_status()["step"] or 0
        wait_until(lambda: (run.read_status()["step"] or 0) > cut_at, 120, "the resumed run to train on")
        client.fine_tuning.jobs.cancel(job.id)  # it would train 100,000 steps: cancelling ends it cleanly
        done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"), timeout=300)
        assert done.status == "cancelled", done.error
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        messages = [e.message for e in events]
        assert set(before) <= {e.id for e in events}
        assert any(m.startswith("the server stopped") for m in messages)
        assert any(m.startswith("the run stopped unexpectedly") for m in messages)
        resumed = [e.fields["step"] for e in run.read_events() if e.kind == "resumed"]
        assert len(resumed) == 2 and resumed[0] == stopped_at and resumed[1] >= resumed[0]  # from checkpoints
        assert {f.id for f in client.files.list().data} >= {u.id for u in uploads}
        assert client.files.content(uploads[1].id).content == (tmp_path / "t1.jsonl").read_bytes()
    finally:
        server.stop()
