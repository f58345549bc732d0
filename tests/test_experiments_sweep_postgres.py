"""`tunelab sweep --storage postgresql://...` against a real PostgreSQL server (Debian's `postgresql` package),
started here as an unprivileged user on a loopback port in a temporary directory and stopped at the end: the study
is created once, two workers share it, and a worker killed mid-trial has its trial retried, not left RUNNING."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, write_jsonl
from tests.test_experiments_sweep import QUICK

pytest.importorskip("psycopg", reason="psycopg is pinned in tunelab[test]: pip install -e '.[test]'")


def pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def as_user() -> tuple[list[str], int | None, int | None]:
    """initdb refuses root: run the server as the `postgres` system user (Debian's package creates it)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run the server as")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    prefix, uid, gid = as_user()
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if uid is not None:
        os.chown(root, uid, gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def sweep_cmd(tmp_path: Path, overrides: list[str], space: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunelab", "sweep", *overrides, "--space", str(space), "--trials", "3",
            "--out", str(tmp_path / "sw"), "--storage", url, "--heartbeat", "1", "--metric", "eval_loss",
            "--no-prune", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_retried(postgres_url, tmp_path, chat_rows):
    overrides = [f"data.train={write_jsonl(tmp_path / 'train.jsonl', chat_rows[:20])}",
                 f"data.eval={write_jsonl(tmp_path / 'eval.jsonl', chat_rows[20:])}", *QUICK]
    space = tmp_path / "space.yaml"
    space.write_text("train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n", encoding="utf-8")

    # a worker on a server storage refuses a study nobody created: workers on several machines would race to
    lone = subprocess.run(sweep_cmd(tmp_path, overrides, space, postgres_url), env=environment(), capture_output=True,
                          text=True, timeout=300)
    assert lone.returncode == 2 and 'no study "run-sweep" yet' in lone.stderr and "--create-study" in lone.stderr
    made = subprocess.run(sweep_cmd(tmp_path, overrides, space, postgres_url, "--create-study"), env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    storage = "postgresql+psycopg://" + postgres_url.split("://", 1)[1]
    study = optuna.load_study(study_name="run-sweep", storage=storage)
    assert [t.state.name for t in study.get_trials()] == ["WAITING"]  # the unchanged config, queued once

    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [subprocess.Popen(sweep_cmd(tmp_path, overrides, space, postgres_url), env=environment(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True) for log in logs]
    victim, survivor = workers
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the victim is killed while a trial of its own runs
        running = [t for t in study.get_trials() if t.state.name == "RUNNING"
                   and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        if running:
            break
        assert victim.poll() is None, (tmp_path / "worker0.log").read_text()[-2000:]
        time.sleep(0.3)
    else:
        raise AssertionError("the first worker never ran a trial")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = running[0]
    assert survivor.wait(timeout=1200) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    for log in logs:
        log.close()

    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state.name == "FAIL"  # its heartbeat stopped: failed, not left RUNNING
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 3
    assert (tmp_path / "sw" / "best.yaml").is_file()
