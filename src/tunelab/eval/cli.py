"""`tunelab eval RUN_DIR|MODEL --data FILE`: score a saved run's tuned model, or any model, on any data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tunelab.precision import autocast


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("eval", help="score a saved run or a model on a data file",
                         description="Score a run directory's tuned model (with the run's task, method and eval "
                                     "settings) or a model alias / HF directory on a data file.")
    cmd.add_argument("target", help="a run directory (holding config.yaml and model/), a bundled alias or a HF dir")
    cmd.add_argument("--data", required=True, help="JSONL/CSV/Parquet file to score")
    cmd.add_argument("overrides", nargs="*",
                     help="key=value settings right after the target, e.g. eval.metrics=[rouge_l] task=sft")
    cmd.add_argument("--out", help="also write the scores as JSON here")
    cmd.set_defaults(handler=_cmd_eval)


def eval_config(target: str, overrides: list[str]) -> tuple[Any, Path | None]:
    """The run's saved config for a run directory (read by `inputs.open_run`), else defaults for a bare model;
    overrides on top."""
    from tunelab.config import _apply_override, validate_config
    from tunelab.inputs import open_run
    from tunelab.rundir import RunDir

    run_dir = Path(target)
    if RunDir(run_dir).has_config():
        raw = open_run(run_dir).config.model_dump(mode="json")
    else:
        raw, run_dir = {"model": target, "data": {"train": "unused"}}, None
    for item in overrides:
        _apply_override(raw, item)
    return validate_config(raw), run_dir


def load_for_eval(config: Any, run_dir: Path | None, dataset: Any = None) -> tuple[Any, Any]:
    """Tokenizer and model: the base as the run loaded it, with the run's trained weights when a run
    directory was given. A classifier's labels come from the run's config (else from `dataset`)."""
    from tunelab.methods import get_method
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, load_pair
    from tunelab.rundir import RunDir
    from tunelab.tasks import get_task

    task, method = get_task(config.task), get_method(config.method)
    spec, rules = task.model_spec(config, dataset), LoadRules.of(config)
    tokenizer, model = load_pair(resolve_model(config.model), spec, rules, **method.load_options(config, spec))
    if run_dir is not None:
        model = method.load(model, RunDir(run_dir).model_dir, spec, rules)
    return tokenizer, model


def evaluate_file(target: str, data: Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Scores of the target on the data file, as the run would have scored its held-out set."""
    from tunelab.data import load_dataset
    from tunelab.inputs import RunData, choose_task, resolve

    config, run_dir = eval_config(target, list(overrides))
    dataset = load_dataset(data, config.data.format, config.data.columns)
    if run_dir is None:  # a bare model: the task (and a classifier's labels) come from this file
        config = resolve(config, RunData.of(dataset))
    task = choose_task(config, dataset)
    tokenizer, model = load_for_eval(config, run_dir, dataset)
    with autocast(config.train.precision):  # as the run scored its held-out set
        scores = task.evaluate(model, tokenizer, task.held_out(config, tokenizer, dataset, None), config)
    return {"target": str(target), "data": str(data), "rows": len(dataset.rows), "metrics": scores.metrics}


def _cmd_eval(args: argparse.Namespace) -> int:
    from tunelab.cli_output import print_table
    from tunelab.eval.report import fmt
    from tunelab.scoring.metrics import describe

    from tunelab.cli_output import ConsoleProgress
    from tunelab.events import Events

    console = ConsoleProgress()
    try:
        with Events(console).active():  # rows scored and answers generated, drawn as bars
            result = evaluate_file(args.target, Path(args.data), args.overrides)
    finally:
        console.close()
    print_table([("metric", "value"), *((describe(k).label, fmt(k, v)) for k, v in result["metrics"].items())])
    print(f"\n{result['rows']} rows of {args.data} scored with {args.target}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
