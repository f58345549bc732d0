"""`tunelab compare` and `tunelab sweep`: argument parsing and live progress; the work is in compare.py
and sweep.py. The console progress class comes from the CLI layer (passed in, not imported)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


from tunelab.events import Event

def split_config(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        config_path, overrides = None, [config_path, *overrides]
    return config_path, overrides


class TrialProgress:
    """The run's progress bar and lines, which say which trial or entry is running and how it ended."""

    def __init__(self, console: Any):
        self.console = console

    def __call__(self, event: Event) -> None:
        if event.kind == "trial_pruned":
            self.console.close()
        self.console(event)


def add_experiment_commands(sub: Any, console: Any) -> None:
    sweep = sub.add_parser("sweep", help="search config keys (e.g. lora.r, train.learning_rate) with Optuna",
                           description="Search the keys of space.yaml; every trial is a normal run judged on a "
                                       "validation split of train; the best config is scored once on held-out.")
    sweep.add_argument("config", nargs="?", help="YAML config file")
    sweep.add_argument("overrides", nargs="*", help="key=value settings applied to every trial")
    sweep.add_argument("--space", required=True, type=Path, help="YAML: key -> [choices] or {low, high, log}")
    sweep.add_argument("--trials", type=int, default=8, help="finished trials wanted (all workers together)")
    sweep.add_argument("--storage", help="Optuna database URL (default: sqlite in the sweep directory); workers "
                                         "given the same URL and study share the trials")
    sweep.add_argument("--study", dest="study_name", help="study name (default: <name>-sweep)")
    sweep.add_argument("--out", dest="out_dir", type=Path, help="sweep directory (default: runs/<name>-sweep)")
    sweep.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    sweep.add_argument("--no-prune", dest="prune", action="store_false", help="run every trial to its end")
    sweep.add_argument("--metric", help="objective (default: the task's first metric)")
    sweep.add_argument("--validation-fraction", type=float, default=0.2, help="share of train held for validation")
    sweep.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's liveness marks")
    sweep.add_argument("--score-default", action="store_true", help="also score the unchanged config on held-out")
    sweep.add_argument("--create-study", dest="create_only", action="store_true",
                       help="create the study in --storage (tables, the unchanged config as its first trial) and "
                            "exit; run it once before starting workers on several machines")
    sweep.add_argument("--time-budget", type=float, metavar="SECONDS",
                       help="stop starting trials that would end past this many seconds")
    sweep.set_defaults(handler=lambda args: _cmd_sweep(args, console))

    improve = sub.add_parser("improve", help="act on a finished run's diagnosis: search its remedies, keep the best",
                             description="Read RUN_DIR's findings (over- or underfitting, forgetting), try the "
                                         "remedies each names as one Optuna study judged on validation rows carved "
                                         "from train, and score the winner once on held-out (docs/improve.md).")
    improve.add_argument("run_dir", type=Path, help="a finished run directory")
    add_improve_options(improve)
    improve.set_defaults(handler=lambda args: _cmd_improve(args, console))

    compare = sub.add_parser("compare", help="train several methods, models or configs on one budget; leaderboard",
                             description="Same data, model and token budget for each entry; prints and saves a "
                                         "leaderboard and a Pareto plot (metric against cost).")
    compare.add_argument("config", nargs="?", help="YAML config file (the base of every entry)")
    compare.add_argument("overrides", nargs="*", help="key=value settings applied to every entry")
    compare.add_argument("--methods", help="comma-separated methods, e.g. full,lora,qlora")
    compare.add_argument("--models", help="comma-separated base models")
    compare.add_argument("--configs", nargs="+", type=Path, help="whole configs to compare")
    compare.add_argument("--seeds", type=int, default=1, help="runs per entry; metrics as mean and 95%% interval")
    compare.add_argument("--out", dest="out_dir", type=Path, help="compare directory (default: runs/<name>-compare)")
    compare.set_defaults(handler=lambda args: _cmd_compare(args, console))


def _cmd_sweep(args: argparse.Namespace, console: Any) -> int:
    from tunelab.config import load_raw
    from tunelab.experiments.sweep import SweepOptions, sweep

    path, overrides = split_config(args)
    opts = SweepOptions(args.space, args.trials, args.out_dir, args.storage, args.study_name, args.sampler,
                        args.prune, args.metric, args.validation_fraction, args.heartbeat, args.score_default,
                        args.create_only, args.time_budget)
    progress = console()
    try:
        summary = sweep(load_raw(path, overrides), opts, on_event=TrialProgress(progress))
    finally:
        progress.close()
    if summary.get("created"):
        print(f"study {summary['study']} is ready in {summary['storage']}; start each worker with the same command "
              "without --create-study")
        return 0
    print_sweep(summary)
    return 0


def print_sweep(summary: dict[str, Any]) -> None:
    from tunelab.eval.report import fmt

    metric, best, default = summary["metric"], summary["best"], summary["default"]
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n)
    print(f"\nsweep {summary['study']}: {states}")
    print(f"best trial {best['trial']}: {best['params']}")
    print(f"  {metric}: validation {fmt(metric, best['validation'])}, held-out {fmt(metric, best['held_out'])}")
    if default["validation"] is not None or default["held_out"] is not None:
        print(f"unchanged config: validation {fmt(metric, default['validation'])}, "
              f"held-out {fmt(metric, default['held_out'])}")
    print(f"best config: {Path(summary['out_dir']) / 'best.yaml'}   report: {Path(summary['out_dir']) / 'report.html'}")


def add_improve_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--budget | --time-budget and --improve-out (for `run --improve`, `prefix` names them improve-...)."""
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(f"--{prefix}budget", dest="budget", type=int, metavar="N",
                        help="remedy trials, besides the original's own settings (default 6)")
    budget.add_argument(f"--{prefix}time-budget", dest="time_budget", type=float, metavar="SECONDS",
                        help="seconds for all of improve: no trial starts that would end past it")
    parser.add_argument(f"--{prefix}metric", dest="improve_metric", metavar="METRIC",
                        help="objective on validation (default: the task's metric a sweep watches)")
    parser.add_argument(f"--{prefix}validation-fraction", dest="improve_validation_fraction", type=float, metavar="F",
                        default=0.2, help="share of the training rows held for validation (default 0.2)")
    parser.add_argument(f"--{prefix}out", dest="improve_out", type=Path, metavar="DIR",
                        help="improve directory (default: RUN_DIR-improve beside the run)")


def improve_options(args: argparse.Namespace) -> Any:
    from tunelab.experiments.improve import ImproveOptions

    return ImproveOptions(budget=args.budget, time_budget=args.time_budget, out_dir=args.improve_out,
                          metric=args.improve_metric, validation_fraction=args.improve_validation_fraction)


def run_improve(run_dir: Path, args: argparse.Namespace, console: Any) -> int:
    from tunelab.experiments.improve import improve

    progress = console()
    try:
        summary = improve(run_dir, improve_options(args), on_event=TrialProgress(progress))
    finally:
        progress.close()
    print_improve(summary)
    return 0


def _cmd_improve(args: argparse.Namespace, console: Any) -> int:
    return run_improve(args.run_dir, args, console)


def print_improve(summary: dict[str, Any]) -> None:
    from tunelab.eval.report import fmt

    metric, decision, held = summary["metric"], summary["decision"], summary["held_out"]
    print(f"\nimprove {summary['original_run']}: {summary['trials']} remedy trial(s) in {summary['seconds']:.0f} s")
    for r in summary["remedies"]:
        best = "-" if r["validation"] is None else fmt(metric, r["validation"])
        print(f"  {r['remedy']}: {r['trials']} trial(s), best validation {metric} {best}")
    print(f"  original on validation: {fmt(metric, decision['original_validation'])}")
    if decision["kept_original"]:
        print(f"nothing beat the original: {decision['note']}")
    else:
        print(f"chosen: {decision['remedy']} {decision['values']} ({decision['note']})")
        print(f"held-out {metric}: {fmt(metric, held['original'])} -> {fmt(metric, held['improved'])}   "
              f"improved run: {summary['improved_run']}")
    out = Path(summary["out_dir"])
    print(f"best config: {out / 'best.yaml'}   report: {out / 'report.html'}")


def _cmd_compare(args: argparse.Namespace, console: Any) -> int:
    from tunelab.config import load_raw
    from tunelab.experiments.compare import compare, entries_from

    path, overrides = split_config(args)
    raw = load_raw(path, overrides) if path or overrides else None
    entries = entries_from(raw, args.methods, args.models, args.configs, overrides)
    progress = console()
    try:
        board = compare(entries, args.seeds, args.out_dir, raw, on_event=TrialProgress(progress))
    finally:
        progress.close()
    from tunelab.experiments.compare import print_leaderboard

    print_leaderboard(board)
    return 0
