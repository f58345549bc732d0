"""`tunelab run CONFIG --nproc N`: the same run on N processes per node, started by torchrun (default) or by
`accelerate launch`, each process running `python -m tunelab run CONFIG ...` as a user would type it.

`launch()` is the one function the CLI and a job worker call. Counting differs between the engines:
torchrun's `--nproc-per-node` counts the processes of one node, accelerate's `--num_processes` counts all
of them over every node; `--nproc` is always per node, and tunelab passes accelerate nproc x nnodes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

from tunelab.errors import ConfigError

LAUNCHERS = ("torchrun", "accelerate")


@dataclass(frozen=True)
class Launch:
    """Where the processes of a run go: `nproc` on each of `nnodes` machines; this machine is `node_rank`."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    launcher: str = "torchrun"

    def check(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ConfigError(f"--nproc and --nnodes: expected at least 1, got {self.nproc} and {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank: expected 0 to {self.nnodes - 1} (--nnodes {self.nnodes}), "
                              f"got {self.node_rank}")
        if self.nnodes > 1 and not self.master_addr:
            raise ConfigError("--nnodes > 1 needs --master-addr: the address of the node with --node-rank 0, "
                              "reachable from every node")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher: expected one of {'|'.join(LAUNCHERS)}, got {self.launcher}")


def command(run_args: list[str], where: Launch) -> list[str]:
    """The launcher's command line for `tunelab run <run_args>` on these processes."""
    where.check()
    target = ["-m", "tunelab", "run", *run_args]
    if where.launcher == "accelerate":
        rendezvous = ["--main_process_ip", where.master_addr, "--main_process_port", str(where.master_port)] \
            if where.master_addr else ["--main_process_port", "0"]  # 0: a free port on this machine
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--num_processes", str(where.nproc * where.nnodes),
                "--num_machines", str(where.nnodes), "--machine_rank", str(where.node_rank), *rendezvous, *target]
    rendezvous = [f"--master-addr={where.master_addr}", f"--master-port={where.master_port}"] \
        if where.master_addr else ["--standalone"]  # one node: a free port, no address to give
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={where.nproc}",
            f"--nnodes={where.nnodes}", f"--node-rank={where.node_rank}", *rendezvous, *target]


def launch(run_args: list[str], where: Launch, env: dict[str, str] | None = None) -> int:
    """Run `tunelab run <run_args>` on the processes `where` asks for; the launcher's exit status."""
    return subprocess.run(command(run_args, where), env=env).returncode


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (docs/scale.md)")
    group.add_argument("--nproc", type=int, help="processes on THIS node, usually one per GPU (torchrun's "
                                                 "--nproc-per-node; accelerate's --num_processes counts every node's: "
                                                 "tunelab passes it nproc x nnodes)")
    group.add_argument("--nnodes", type=int, default=1, help="machines taking part (default 1)")
    group.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0 to nnodes-1")
    group.add_argument("--master-addr", help="address of the node with --node-rank 0 (needed for --nnodes > 1)")
    group.add_argument("--master-port", type=int, default=29500, help="its free TCP port (default 29500)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="torchrun",
                       help="which engine starts the processes (default torchrun)")


def launch_from_args(args: argparse.Namespace, run_args: list[str]) -> int:
    where = Launch(args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port, args.launcher)
    return launch(run_args, where)
