"""python: the caller's source, defining `grade(sample, item) -> float`, run in a child process.

Off unless the caller allows it (it executes the caller's code). The child is a fresh interpreter (`-I`: no
environment variables, user site or working directory on its path) in an empty temporary directory, with a
minimal environment (no keys or tokens of this process), in its own session so that everything it starts is
killed with it on time-out. Before the source runs it limits itself (resource.setrlimit): address space
(memory), CPU seconds, the size of any file it writes, no core dumps; and it leaves the network: a network
namespace of its own (only a loopback that is down) where the kernel allows one, else Python's sockets refuse
to open. That fallback, like the limits, guards against mistakes, not against code written to escape: run
python graders only from people you would let run code on this machine. Limits follow OpenAI's (2 minutes,
2 GB of memory, 1 GB of disk) unless the caller sets others.
"""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from tunelab.graders.base import Graded, GraderType, Options, fail, register_grader, shown

MAX_SOURCE = 256 * 1024

RUNNER = r'''
import ctypes, json, numbers, os, resource, sys, traceback

def leave_network():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) == 0:                     # CLONE_NEWNET (allowed to root)
        return
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(0x10000000 | 0x40000000) == 0:        # CLONE_NEWUSER | CLONE_NEWNET (unprivileged)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        return
    import socket
    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise OSError("network access is disabled in python graders")
    socket.socket = NoSocket

def main():
    limits = json.loads(sys.argv[1])
    data = json.loads(sys.stdin.read())
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                                         # the grader's prints never mix into the result
    leave_network()
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["disk"], limits["disk"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        namespace = {"__name__": "grader"}
        exec(compile(data["source"], "<grader source>", "exec"), namespace)
        value = namespace["grade"](data["sample"], data["item"])
        out = {"value": float(value)} if isinstance(value, numbers.Real) else {"returned": repr(value)[:200]}
    except BaseException as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<grader source>"]
        where = f" (line {frames[-1].lineno})" if frames else ""
        out = {"error": f"{type(err).__name__}: {err}"[:1000] + where}
    result.write(json.dumps(out))
    result.flush()

main()
'''


def check(spec: dict[str, Any], where: str) -> None:
    source = spec["source"]
    if not isinstance(source, str) or not source.strip():
        fail(f"{where}.source", f"expected the grader's Python source, got {shown(source)}")
    if len(source.encode()) > MAX_SOURCE:
        fail(f"{where}.source", f"{len(source.encode())} bytes; at most {MAX_SOURCE} (256 kB)")
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        fail(f"{where}.source", f"line {err.lineno}: {err.msg}")
    except (RecursionError, MemoryError, ValueError) as err:
        fail(f"{where}.source", f"cannot be parsed ({type(err).__name__})")
    grade_def = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "grade"), None)
    if grade_def is None:
        fail(f"{where}.source", "defines no top-level function grade(sample, item) -> float")
    params = grade_def.args
    if len(params.posonlyargs + params.args) < 2 and params.vararg is None:
        fail(f"{where}.source", "grade must take two arguments: grade(sample, item)")
    if "image_tag" in spec and not isinstance(spec["image_tag"], str):
        fail(f"{where}.image_tag", f"expected a string, got {shown(spec['image_tag'])}")


def child_env(home: str) -> dict[str, str]:
    """What the child sees of the environment: no variable of this process (keys, tokens) reaches it."""
    return {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_source(source: str, sample: dict[str, Any], item: Any, options: Options) -> Graded:
    limits = {"memory": options.python_memory_bytes, "cpu": max(1, math.ceil(options.python_seconds)),
              "disk": options.python_disk_bytes}
    with tempfile.TemporaryDirectory(prefix="tunelab-grader-") as home:
        child = subprocess.Popen([sys.executable, "-I", "-c", RUNNER, json.dumps(limits)], cwd=home,
                                 env=child_env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = child.communicate(json.dumps({"source": source, "sample": sample, "item": item}).encode(),
                                       timeout=options.python_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its session: the child and whatever it started
            child.communicate()
            return Graded.failed("unresponsive_reward_error", f"grade() ran past {options.python_seconds:g} s and "
                                 "was killed", python_grader_runtime_error_details="timed out")
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    return outcome(child.returncode, out)


def outcome(returncode: int, out: bytes) -> Graded:
    """The child's answer as a grade: its number, or the error that stopped it."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed, e.g. out of memory)"}.get(name, "")
        return Graded.failed("python_grader_server_error", f"the grader's process died of {name}{why}",
                             python_grader_server_error_type=name)
    try:
        answer = json.loads(out)
    except ValueError:
        return Graded.failed("python_grader_server_error", f"the grader's process exited {returncode} without a "
                             "result", python_grader_server_error_type="no_result")
    if "error" in answer:
        return Graded.failed("python_grader_runtime_error", answer["error"],
                             python_grader_runtime_error_details=answer["error"])
    value = answer.get("value")
    if value is None or not math.isfinite(value):
        shown_value = answer.get("returned", value)
        message = f"grade() returned {shown_value}, expected a finite number"
        return Graded.failed("python_grader_runtime_error", message, python_grader_runtime_error_details=message)
    return Graded(value)


def grade(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any], options: Options) -> list[Graded]:
    return [run_source(spec["source"], sample, item, options) for sample, item in zip(samples, items)]


register_grader(GraderType("python", ("source",), ("image_tag",), check, grade))
