"""Online RL from a reward (TRL's GRPOTrainer, or RLOOTrainer with `rlhf.algorithm: rloo`) on prompt rows.

The reward is a Python function the user names (`rlhf.reward_function: "module:function"`), a reward model
trained by the `reward` task (`rlhf.reward_model: <its run directory>`), or an OpenAI grader
(`rlhf.grader: {type: string_check, ...}`, see tunelab.graders) that grades each completion as its `sample`
with the row's other fields (`reference_answer`, ...) as its `item`. A function is called as TRL calls it:

    def f(prompts: list, completions: list, **kwargs) -> list[float]

one float per completion; prompts and completions are strings for string prompts, and chat turns for chat
prompts (a completion is then `[{"role": "assistant", "content": ...}]`); `kwargs` carries TRL's extras
(`completion_ids`, `trainer_state`, ...) and `item`, each completion's row without its prompt as JSON text,
so accept and ignore what you do not read. A function that raises or returns anything but one real number
per completion stops the run with an error naming it and the prompt; a grader scores a sample it cannot
grade 0, as OpenAI's do, and logs the share of such samples as `grader_errors`. Held out, `mean_reward` is
the reward of the model's greedy answer to each prompt.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from tunelab.errors import ConfigError, DataError
from tunelab.graders import Options, check_grader, grade_batch, item_paths, python_paths
from tunelab.graders.template import MissingVariable, lookup, show
from tunelab.scoring.generate import generate
from tunelab.scoring.rows import RowValues
from tunelab.settings import Section, register_section
from tunelab.tasks.base import FORGETTING, GENERATION, Scores, register_task
from tunelab.tasks.lm import GenerationCase, LmTask
from tunelab.tasks.preference import TrlPrepared, trl_config, trl_dataset


class RlhfSettings(Section):
    algorithm: Literal["grpo", "rloo"] = Field("grpo", description="TRL's online RL trainer: GRPO or RLOO.")
    reward_function: str | None = Field(
        None, pattern=r"^([\w.]+|.+\.py):\w+$",
        description='The reward as "file.py:function" (a path relative to the YAML file, or to the working '
                    'directory on the command line) or "module:function" (importable from the working directory), '
                    "called as f(prompts, completions, **kwargs) -> list[float].")
    reward_model: Path | None = Field(None, description="The reward as the run directory of a `reward` task run.")
    grader: dict[str, Any] | None = Field(
        None, description="The reward as an OpenAI grader (string_check, text_similarity, score_model, multi, "
                          "python): a mapping; each completion is its sample, the row's other fields its item.")
    allow_python_grader: bool = Field(False, description="Run python graders (in rlhf.grader): they execute the "
                                                         "grader's source code.")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group compared).")
    max_completion_length: int = Field(32, ge=1, description="Tokens generated per completion, in training and "
                                                             "for the held-out mean reward.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the training completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty towards the base; 0 needs no reference model.")

    @classmethod
    def anchor(cls, values: dict[str, Any], base: Path) -> None:
        source, sep, name = str(values.get("reward_function") or "").rpartition(":")
        if sep and source.endswith(".py") and not Path(source).is_absolute():
            values["reward_function"] = f"{base / source}:{name}"

    @field_validator("grader")
    @classmethod
    def valid_grader(cls, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        if spec is not None:
            try:
                check_grader(spec, "rlhf.grader")
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return spec

    @model_validator(mode="after")
    def one_reward(self) -> RlhfSettings:
        if sum(r is not None for r in (self.reward_function, self.reward_model, self.grader)) != 1:
            raise ValueError("set exactly one of rlhf.reward_function, rlhf.reward_model and rlhf.grader")
        found = python_paths(self.grader, "rlhf.grader") if self.grader else []
        if found and not self.allow_python_grader:
            raise ValueError(f"{found[0]}.type: python graders run the grader's source code; set "
                             "rlhf.allow_python_grader=true to run them (only for code you trust)")
        return self


register_section("rlhf", RlhfSettings)


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


class CheckedReward:
    """The user's reward function, each call checked: an exception or a non-number names the function and
    the prompt it failed on."""

    def __init__(self, fn: Any, name: str):
        self.fn, self.name, self.__name__ = fn, name, name.split(":")[-1]

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        try:
            out = self.fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as err:  # the user's code: any failure is reported with the prompt it failed on
            raise DataError(f'rlhf.reward_function "{self.name}" raised {type(err).__name__}: {err} '
                            f'(on prompt {_prompt_text(self._failing(prompts, completions)[0])!r})') from None
        if not isinstance(out, (list, tuple)) or len(out) != len(completions):
            raise DataError(f'rlhf.reward_function "{self.name}" must return a list of {len(completions)} numbers '
                            f"(one per completion), got {type(out).__name__} (on prompt {_prompt_text(prompts[0])!r})")
        for value, prompt in zip(out, prompts):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(f'rlhf.reward_function "{self.name}" returned {value!r}, expected a finite number '
                                f"(on prompt {_prompt_text(prompt)!r})")
        return [float(v) for v in out]

    def _failing(self, prompts: list[Any], completions: list[Any]) -> tuple[Any, Any]:
        """The first (prompt, completion) the function raises on alone, else the first of the batch."""
        for prompt, completion in zip(prompts, completions):
            try:
                self.fn(prompts=[prompt], completions=[completion])
            except Exception:  # noqa: BLE001 - looking for the culprit
                return prompt, completion
        return prompts[0], completions[0]


def load_reward_function(name: str) -> CheckedReward:
    source, _, attr = name.rpartition(":")
    try:
        fn = getattr(_reward_module(source), attr)
    except (ImportError, AttributeError, FileNotFoundError, SyntaxError) as err:
        raise ConfigError(f'rlhf.reward_function: cannot load "{name}": {err}') from None
    if not callable(fn):
        raise ConfigError(f'rlhf.reward_function: "{name}" is not a function(prompts, completions, **kwargs)')
    return CheckedReward(fn, name)


def _reward_module(source: str) -> Any:
    """The module a reward names: a .py file (by its path), or a module importable from the working directory."""
    if not source.endswith(".py"):
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # "importable from the working directory", also under the console script
        return importlib.import_module(source)
    path = Path(source).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    name = f"tunelab_reward_{path.stem}_{abs(hash(str(path)))}"  # in sys.modules, so its function pickles
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


class RewardModel:
    """A `reward` run's model as a reward function: scores prompt + completion as the reward task trained it."""

    def __init__(self, run_dir: Path):
        from tunelab.tasks.reward import load_reward_run

        self.__name__ = f"reward_model:{run_dir.name}"
        self.tokenizer, self.model = load_reward_run(run_dir)

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        from tunelab.tasks.preference import trl_row
        from tunelab.tasks.reward import rewards, sequence

        texts = []
        for prompt, completion in zip(prompts, completions):
            pair = trl_row({"prompt": prompt, "chosen": completion, "rejected": ""})
            texts.append(sequence(pair["prompt"], pair["chosen"], self.tokenizer, 4096))
        return rewards(self.model, texts, self.tokenizer.pad_token_id, batch_size=16)


class GraderReward:
    """An OpenAI grader as a reward function: each completion graded as the sample, with its row as the item."""

    def __init__(self, spec: dict[str, Any], allow_python: bool):
        self.spec, self.options, self.__name__ = spec, Options(allow_python=allow_python), f"grader:{spec['name']}"

    def __call__(self, prompts: list[Any], completions: list[Any], item: list[str] | None = None,
                 log_metric: Any = None, **kwargs: Any) -> list[float]:
        items = [json.loads(i) for i in item] if item is not None else [{} for _ in completions]
        samples = [{"output_text": c if isinstance(c, str) else c[-1]["content"]} for c in completions]
        graded = grade_batch(self.spec, samples, items, self.options)
        if log_metric is not None and graded:
            log_metric("grader_errors", sum(bool(g.errors) for g in graded) / len(graded))
        return [g.reward for g in graded]


def reward_of(config: Any) -> Any:
    r = config.rlhf
    if r.grader is not None:
        return GraderReward(r.grader, r.allow_python_grader)
    return load_reward_function(r.reward_function) if r.reward_function else RewardModel(Path(r.reward_model))


def item_of(row: dict[str, Any]) -> str:
    """A row's fields besides its prompt, as JSON text (a grader's item; text, so rows may differ in fields)."""
    return json.dumps({k: v for k, v in row.items() if k != "prompt"}, ensure_ascii=False)


def check_items(spec: dict[str, Any], dataset: Any) -> None:
    """Every row holds each item field the grader's templates read: refused here, not graded 0 all run long."""
    paths = item_paths(spec)
    for row, line in zip(dataset.rows, dataset.lines):
        for path in paths:
            try:
                lookup({"item": {k: v for k, v in row.items() if k != "prompt"}}, path)
            except MissingVariable:
                raise DataError(f'{dataset.path}:{line}: field "{show(path).removeprefix("item.")}": missing; '
                                f"rlhf.grader reads {{{{ {show(path)} }}}}") from None


@dataclass
class PromptSet:
    """Held-out prompts: as the policy reads them (cases), as the reward reads them, the reward itself, and each
    prompt's row as the reward's `item`."""

    cases: list[GenerationCase]
    prompts: list[Any]
    reward: Any
    items: list[str] = field(default_factory=list)


class Rlhf(LmTask):
    name = "rlhf"
    description = "Online RL (TRL GRPO or RLOO) on prompt rows against a reward function or a reward model."
    formats = ("prompt",)
    sections = ("rlhf",)
    evidence = frozenset({GENERATION, FORGETTING})
    default_metrics = ("mean_reward",)

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        """A batch of whole groups, and a reward that loads (a function that imports, a finished reward run)."""
        if config.train.batch_size % config.rlhf.num_generations:
            raise ConfigError(f"train.batch_size: {config.train.batch_size} must be a multiple of "
                              f"rlhf.num_generations ({config.rlhf.num_generations}): a batch holds whole groups")
        r = config.rlhf
        if r.grader is not None:
            for dataset in datasets:
                check_items(r.grader, dataset)
        elif r.reward_function:
            load_reward_function(r.reward_function)
        else:
            from tunelab.tasks.reward import reward_run_config

            reward_run_config(Path(r.reward_model))

    def runs_read(self, config: Any) -> list[Any]:
        return [Path(config.rlhf.reward_model)] if config.rlhf.reward_model else []

    def metric_names(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def batch_multiple(self, config: Any) -> int:
        return config.rlhf.num_generations

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> TrlPrepared:
        held_out = self.held_out(config, tokenizer, held, events)
        sample = train.sample(config.eval.train_sample, config.train.seed)
        r = config.rlhf
        return TrlPrepared([{"prompt": row["prompt"], "item": item_of(row)} for row in train.rows], held_out,
                           self.metric_names(config),
                           PromptSet(self.generation_cases(sample, tokenizer, 0), [row["prompt"] for row in sample.rows],
                                     held_out.reward, [item_of(row) for row in sample.rows]) if sample.rows else None,
                           options={"algorithm": r.algorithm, "reward": held_out.reward,
                                    "num_generations": r.num_generations, "temperature": r.temperature,
                                    "max_completion_length": r.max_completion_length, "beta": r.beta})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> PromptSet:
        cases = self.generation_cases(dataset, tokenizer, config.eval.max_examples)
        prompts = [row["prompt"] for row in dataset.rows][: len(cases)]
        return PromptSet(cases, prompts, reward_of(config), [item_of(row) for row in dataset.rows][: len(cases)])

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError("GRPOTrainer/RLOOTrainer tokenizes and batches its own rows")

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: TrlPrepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        o = dict(prepared.options)
        config_class, trainer_class = (GRPOConfig, GRPOTrainer) if o.pop("algorithm") == "grpo" else \
            (RLOOConfig, RLOOTrainer)
        reward = o.pop("reward")
        return trainer_class(model=model, reward_funcs=reward, args=trl_config(config_class, args, **o),
                             train_dataset=trl_dataset(prepared.train), processing_class=tokenizer,
                             callbacks=callbacks)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: PromptSet, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        return self.evaluate(model, tokenizer, held_out, config).metrics

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: PromptSet, config: Any) -> Scores:
        answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], config.rlhf.max_completion_length,
                           batch_size=config.eval.generation_batch)
        completions = [a if isinstance(p, str) else [{"role": "assistant", "content": a}]
                       for p, a in zip(held_out.prompts, answers)]
        scores = held_out.reward(prompts=held_out.prompts, completions=completions, item=held_out.items) \
            if answers else []
        samples = [{"line": c.line, "prompt": c.prompt_text, "reference": "", "output": a, "reward": s}
                   for c, a, s in zip(held_out.cases, answers, scores)]
        rows = {"mean_reward": RowValues.means([c.line for c in held_out.cases], scores)}
        return Scores({"mean_reward": rows["mean_reward"].value()}, samples, rows)


register_task(Rlhf())
