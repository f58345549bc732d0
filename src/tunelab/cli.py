"""tunelab's one entry point: `tunelab run | models | config | serve`.

A user's mistake prints one line naming the problem and exits 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from tunelab.errors import RunInterrupted, TunelabError


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = _parser()
    args = _parse(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except TunelabError as err:
        print(f"{err.label}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, taking key=value overrides wherever they stand: `tunelab sweep CONFIG --trials 8 lora.r=8` reads
    like `tunelab sweep CONFIG lora.r=8 --trials 8` (argparse alone stops collecting positionals at an option)."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _quiet_libraries() -> None:
    """Offline always; library chatter off so a user sees tunelab's own lines."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # also set on `import tunelab`, for callers of run()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers' Trainer imports PEFT, which imports bitsandbytes whenever it is installed; on an avx512_bf16 CPU
    # its import then asks the user to `pip install kernels` (an optional faster 4-bit kernel, fetched online), even
    # for a run that quantizes nothing. Its fallback works, offline: drop that one line.
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_no_kernels_hint)  # once: filters are a set


def _no_kernels_hint(record: object) -> bool:
    return "kernels-community" not in record.getMessage()


def _parser() -> argparse.ArgumentParser:
    from tunelab import __version__

    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models with evidence.")
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="fine-tune a model and show the before/after gain",
                         description="Fine-tune from a YAML config plus key=value overrides "
                                     "(e.g. train.learning_rate=1e-4 data.train=my.jsonl).")
    run.add_argument("config", nargs="?", help="YAML config file (optional if every key is given as key=value)")
    run.add_argument("overrides", nargs="*", help="key=value settings applied over the file")
    run.add_argument("--resume", action="store_true",
                     help="continue an unfinished run (output_dir, else the newest runs/<name>-*) from its latest "
                          "complete checkpoint; rerunning into an unfinished output_dir resumes too")
    from tunelab.launch import add_launch_arguments

    add_launch_arguments(run)
    run.add_argument("--improve", action="store_true",
                     help="then act on the run's diagnosis: tunelab improve on its directory (docs/improve.md)")
    from tunelab.experiments.commands import add_improve_options

    add_improve_options(run, prefix="improve-")
    run.set_defaults(handler=_cmd_run)

    models = sub.add_parser("models", help="list the bundled models")
    models.set_defaults(handler=_cmd_models)

    from tunelab.data.cli import add_data_commands
    from tunelab.eval.cli import add_eval_commands
    from tunelab.export.cli import add_export_commands

    add_data_commands(sub)
    add_eval_commands(sub)
    add_export_commands(sub)
    from tunelab.cli_output import ConsoleProgress
    from tunelab.experiments.commands import add_experiment_commands

    add_experiment_commands(sub, ConsoleProgress)
    from tunelab.serve.command import add_serve_command

    add_serve_command(sub)

    from tunelab.plan import add_plan_command

    add_plan_command(sub)

    options = sub.add_parser("options", help="list every config key with its default and meaning")
    options.add_argument("--markdown", action="store_true",
                         help="the run's own keys and each section's owner as a Markdown table (README.md's)")
    options.set_defaults(handler=_cmd_options)

    methods = sub.add_parser("methods", help="list the fine-tuning strategies (method=...)")
    methods.set_defaults(handler=_cmd_methods)
    tasks = sub.add_parser("tasks", help="list the training paradigms (task=...)")
    tasks.set_defaults(handler=_cmd_tasks)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from tunelab.config import load_config

    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        config_path, overrides = None, [config_path, *overrides]
    config = load_config(config_path, overrides)  # checked here before any process starts
    if args.nproc:
        from tunelab.launch import launch_from_args

        return launch_from_args(args, [*([config_path] if config_path else []), *overrides,
                                       *(["--resume"] if args.resume else [])])

    from tunelab.cli_output import ConsoleProgress, print_summary
    from tunelab.ranks import is_main_process
    from tunelab.experiments import run_experiment

    progress = ConsoleProgress()
    progress.waiting("starting: loading the training libraries")  # seconds of imports before the run's first event
    try:
        from tunelab.experiments import run_experiment

        result = run_experiment(config, on_event=progress, resume=args.resume)
    except RunInterrupted as err:
        err.resume_command = _resume_command(config_path, overrides, err.run_dir)
        raise
    finally:
        progress.close()
    if is_main_process():
        print_summary(result.run_dir, result.summary)
    if args.improve and is_main_process():
        from tunelab.experiments.commands import run_improve

        return run_improve(result.run_dir, args, ConsoleProgress)
    return 0


def _resume_command(config_path: str | None, overrides: list[str], run_dir: object) -> str:
    kept = [o for o in overrides if not o.startswith("output_dir=")]
    where = [f"output_dir={run_dir}"] if run_dir is not None else []
    return shlex.join(["tunelab", "run", *([config_path] if config_path else []), *kept, *where, "--resume"])


def _cmd_models(args: argparse.Namespace) -> int:
    from tunelab.models import list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['kind']:<9}  {r['description']} [{r['state']}]")
    print("\nAny local Hugging Face checkpoint directory works too: model=/path/to/checkpoint")
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    from tunelab.config import describe_options, options_markdown

    if args.markdown:
        print(options_markdown(), end="")
        return 0
    rows = describe_options()
    width = max(len(key) for key, _, _ in rows)
    for key, default, help_text in rows:
        print(f"{key:<{width}}  {default:<16}  {help_text}")
    return 0



def _cmd_methods(args: argparse.Namespace) -> int:
    from tunelab.cli_output import print_table
    from tunelab.methods import METHODS

    rows = [(m.name, m.trains, "yes" if m.mergeable else "no", "/".join(m.devices), f"{m.default_learning_rate:g}",
             ", ".join(m.sections) or "-") for m in METHODS.values()]
    print_table([("method", "trains", "merge", "runs on", "default lr", "settings"), *rows], numbers=False)
    print()
    for m in METHODS.values():
        print(f"{m.name}: {m.description}")
    print("\nEach method's settings: tunelab options (e.g. lora.r); a section is valid only with its method.")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from tunelab.cli_output import print_table
    from tunelab.tasks import TASKS

    rows = [(t.name, " or ".join(t.formats), t.model_kind.replace("_", " "), ", ".join(t.default_metrics),
             ", ".join([*sorted(t.evidence), *t.baseline_names]) or "-", ", ".join(t.sections) or "-") for t in TASKS.values()]
    print_table([("task", "rows", "model", "metrics", "evidence and baselines", "settings"), *rows], numbers=False)
    print()
    for t in TASKS.values():
        print(f"{t.name}: {t.description}")
    print("\nThe evidence every task gets: before/after on held-out rows, the fit diagnosis, and its baselines.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
