"""A reward model from preference pairs: a one-output sequence-classification head trained by TRL's
RewardTrainer (Bradley-Terry: loss = -log sigmoid(r(chosen) - r(rejected))).

Held out, a pair is won when r(chosen) > r(rejected), a tie counting one half (`pairwise_accuracy`); `reward_margin` is
the mean r(chosen) - r(rejected). The tuned model is what `rlhf.reward_model` points at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.events import batch_starts
from tunelab.models.loading import ModelSpec
from tunelab.scoring.metrics import pairwise_rows, pairwise_scores
from tunelab.scoring.rows import RowValues
from tunelab.tasks.base import Scores, Task, register_task
from tunelab.tasks.classify import HEADS, Collate
from tunelab.tasks.preference import TrlPrepared, answer_ids, render_pair, trl_config, trl_dataset, trl_row


@dataclass
class Pairs:
    """Held-out pairs as the token ids the reward model reads, and what the report shows of each."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    lines: list[int]
    prompts: list[str]
    references: list[str]


def sequence(prompt: Any, answer: Any, tokenizer: Any, max_length: int) -> list[int]:
    """Ids of prompt + answer as RewardTrainer tokenizes them (`preference.answer_ids`), cut at max_length."""
    return answer_ids(prompt, answer, tokenizer)[1][:max_length]


def encode_pairs(dataset: Any, tokenizer: Any, max_length: int) -> Pairs:
    chosen, rejected, prompts, refs = [], [], [], []
    for row in dataset.rows:
        pair = trl_row(row)
        chosen.append(sequence(pair["prompt"], pair["chosen"], tokenizer, max_length))
        rejected.append(sequence(pair["prompt"], pair["rejected"], tokenizer, max_length))
        prompt, good, _ = render_pair(row, tokenizer)
        prompts.append(prompt)
        refs.append(good)
    return Pairs(chosen, rejected, list(dataset.lines), prompts, refs)


@torch.no_grad()
def rewards(model: torch.nn.Module, sequences: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
    """The model's scalar output for each sequence."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate, out = Collate(pad_id), []
    try:
        for start in batch_starts("scoring rewards", len(sequences), batch_size):
            batch = collate([{"input_ids": s, "labels": 0} for s in sequences[start:start + batch_size]])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            out += logits[:, 0].float().tolist()
    finally:
        model.train(was_training)
    return out


def bradley_terry_losses(chosen: list[float], rejected: list[float]) -> list[float]:
    """Each pair's -log sigmoid(r(chosen) - r(rejected)), the training loss."""
    margins = torch.tensor(chosen, dtype=torch.float64) - torch.tensor(rejected, dtype=torch.float64)
    return (-torch.nn.functional.logsigmoid(margins)).tolist()


class Reward(Task):
    name = "reward"
    description = "A reward model (one-output head) from prompt/chosen/rejected pairs, by TRL's RewardTrainer."
    formats = ("preference",)
    model_kind = "sequence_classifier"
    default_metrics = ("pairwise_accuracy", "reward_margin")

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        return ModelSpec(self.model_kind, heads=HEADS, options={"num_labels": 1})

    def metric_names(self, config: Any) -> list[str]:
        return list(self.default_metrics)

    def validation_metrics(self, config: Any) -> list[str]:
        return ["eval_loss", *self.default_metrics]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> TrlPrepared:
        sample = train.sample(config.eval.train_sample, config.train.seed)
        return TrlPrepared([trl_row(row) for row in train.rows], self.held_out(config, tokenizer, held, events),
                           self.metric_names(config),
                           self.held_out(config, tokenizer, sample, events) if sample.rows else None,
                           options={"max_length": config.train.max_length})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any) -> Pairs:
        return encode_pairs(dataset, tokenizer, config.train.max_length)

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: TrlPrepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from trl import RewardConfig, RewardTrainer

        # RewardTrainer leaves out training pairs longer than max_length; held-out pairs are cut to it instead.
        config = trl_config(RewardConfig, args, max_length=prepared.options["max_length"], disable_dropout=True)
        return RewardTrainer(model=model, args=config, train_dataset=trl_dataset(prepared.train),
                             processing_class=tokenizer, callbacks=callbacks)

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: Pairs, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        return self.evaluate(model, tokenizer, held_out, config).metrics

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: Pairs, config: Any) -> Scores:
        pad, batch = tokenizer.pad_token_id, config.eval.batch_size
        chosen = rewards(model, held_out.chosen, pad, batch)
        rejected = rewards(model, held_out.rejected, pad, batch)
        rows = {"eval_loss": RowValues.means(held_out.lines, bradley_terry_losses(chosen, rejected)),
                **pairwise_rows(held_out.lines, chosen, rejected)}
        samples = [{"line": line, "prompt": prompt, "reference": ref,
                    "output": f"r(chosen) {c:.3f}, r(rejected) {r:.3f}"}
                   for line, prompt, ref, c, r in zip(held_out.lines, held_out.prompts, held_out.references,
                                                      chosen, rejected)]
        return Scores({"eval_loss": rows["eval_loss"].value(), **pairwise_scores(chosen, rejected)}, samples, rows)


REWARD = register_task(Reward())


def reward_run_config(run_dir: Path) -> dict[str, Any]:
    """The settings of a finished `reward` run (the one reader, `rundir.RunDir`; `inputs.open_run`, above this
    layer, also validates them), refused unless the run succeeded and saved its model."""
    from tunelab.rundir import RunDir

    run = RunDir(run_dir)
    if not run.has_config():
        raise ConfigError(f"rlhf.reward_model: {run_dir} is not a run directory (no config)")
    raw = run.read_config()
    if raw.get("task") != REWARD.name:
        raise ConfigError(f'rlhf.reward_model: {run_dir} is a run of task "{raw.get("task")}"; expected "reward"')
    if not (run.finished() and run.has_model()):
        raise ConfigError(f"rlhf.reward_model: {run_dir} holds an unfinished run (it is {run.state()}); finish it first")
    return raw


def load_reward_run(run_dir: Path) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and frozen tuned model of a finished `reward` run (its base model and method as its config
    names them), for `rlhf.reward_model`."""
    from tunelab.methods import get_method
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, load_pair
    from tunelab.rundir import RunDir

    raw = reward_run_config(run_dir)
    spec, rules = REWARD.model_spec(None, None), LoadRules(bool(raw.get("allow_pickle")), bool(raw.get("trust_remote_code")))
    tokenizer, base = load_pair(resolve_model(raw["model"]), spec, rules)
    model = get_method(raw["method"]).load(base, RunDir(run_dir).model_dir, spec, rules).eval()
    model.requires_grad_(False)
    return tokenizer, model
