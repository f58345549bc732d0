"""Direct preference optimisation (TRL's DPOTrainer) on prompt/chosen/rejected pairs, with an adapter.

The reference model is the base: the method's adapter switched off (`Method.disabled`), never a second
copy in memory. TRL 1.16 would instead add a frozen copy of the adapter named "ref" and use that; it is
removed after the trainer is built, so TRL falls back to disabling the adapter (the same base for a
freshly initialised LoRA, and the true base for methods whose start is not the identity). A method with
no switched-off view (`full`) is refused before the model loads.

Held out: the implicit reward r = beta * (log pi(answer|prompt) - log pi_ref(answer|prompt));
`pairwise_accuracy` is the share of pairs with r(chosen) > r(rejected), a tie counting one half,
`reward_margin` the mean r(chosen) - r(rejected), `eval_loss` the DPO loss. Before training the policy is
the reference: every implicit reward is 0, every pair a tie, so accuracy 50% (chance: a tuned accuracy
must beat it, not 0%), margin 0 and loss log 2. Greedy answers are
scored against the chosen answer as the reference, as `sft` scores its completions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field

from tunelab.data.tokens import IGNORE
from tunelab.errors import ConfigError
from tunelab.scoring.metrics import fit_metrics, pairwise_rows
from tunelab.scoring.rows import RowValues
from tunelab.settings import Section, register_section
from tunelab.tasks.base import FORGETTING, GENERATION, Scores, register_task
from tunelab.tasks.lm import Encoded, HeldOut, LmTask, heldout_loss, score, truncate
from tunelab.tasks.preference import TrlPrepared, answer_ids, common_prefix, trl_config, trl_dataset, trl_row


class DpoSettings(Section):
    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (DPO's beta): the "
                                               "implicit reward is beta times the log-probability ratio.")
    sft_weight: float = Field(0.0, ge=0, description="Weight of a cross-entropy loss on the chosen answers added to "
                                                     "the DPO loss (RPO; TRL loss_type [sigmoid, sft]); keeps the "
                                                     "policy writing the chosen answers whole. 0: plain DPO.")


register_section("dpo", DpoSettings)


@dataclass
class PairsHeldOut(HeldOut):
    """Generation cases (with the chosen answer as reference) plus each pair's chosen and rejected sequences,
    supervised on the answer only."""

    chosen: list[Encoded] = field(default_factory=list)
    rejected: list[Encoded] = field(default_factory=list)
    beta: float = 0.1
    lines: list[int] = field(default_factory=list)  # each pair's line in its file


def losses(sft_weight: float) -> dict[str, Any]:
    """TRL's loss settings: plain DPO (sigmoid), or DPO plus weighted cross-entropy on the chosen answers."""
    if not sft_weight:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}


def encode_pair(row: dict[str, Any], tokenizer: Any, max_length: int) -> tuple[Encoded, Encoded]:
    """The chosen and rejected sequences as DPOTrainer builds them (`preference.answer_ids`), loss on the
    answers only: they start where the prompt alone and either whole sequence first differ."""
    pair = trl_row(row)
    prompt, chosen = answer_ids(pair["prompt"], pair["chosen"], tokenizer)
    _, rejected = answer_ids(pair["prompt"], pair["rejected"], tokenizer)
    start = min(common_prefix(prompt, chosen), common_prefix(prompt, rejected))
    return truncate(chosen, [IGNORE] * start + chosen[start:], max_length), \
        truncate(rejected, [IGNORE] * start + rejected[start:], max_length)


def answer_logps(model: torch.nn.Module, examples: list[Encoded], pad_id: int, batch_size: int) -> list[float]:
    """log p(answer | prompt) per sequence: minus its summed token loss."""
    if not examples:
        return []
    return [-nll for nll in heldout_loss(model, examples, pad_id, batch_size, per_row=True)["eval_row_nll"]]


def reference_logps(model: torch.nn.Module, examples: list[Encoded], pad_id: int, batch_size: int) -> list[float]:
    """The same under the reference: a PEFT model with its adapter switched off; an untuned model is its own."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with model.disable_adapter():
            return answer_logps(model, examples, pad_id, batch_size)
    return answer_logps(model, examples, pad_id, batch_size)


def implicit_reward_rows(model: torch.nn.Module, held: PairsHeldOut, batch_size: int) -> dict[str, RowValues]:
    """DPO loss, pairwise accuracy and margin of the implicit rewards, pair by pair."""
    def rewards(examples: list[Encoded]) -> list[float]:
        policy = answer_logps(model, examples, held.pad_id, batch_size)
        reference = reference_logps(model, examples, held.pad_id, batch_size)
        return [held.beta * (p - r) for p, r in zip(policy, reference)]

    chosen, rejected = rewards(held.chosen), rewards(held.rejected)
    losses = [math.log1p(math.exp(-(c - r))) if c - r > -30 else r - c for c, r in zip(chosen, rejected)]
    return {"eval_loss": RowValues.means(held.lines, losses), **pairwise_rows(held.lines, chosen, rejected)}


def implicit_rewards(model: torch.nn.Module, held: PairsHeldOut, batch_size: int) -> dict[str, float]:
    """DPO loss, pairwise accuracy and margin of the implicit rewards over the held-out pairs."""
    return {name: values.value() for name, values in implicit_reward_rows(model, held, batch_size).items()}


def needs_switched_off_view(config: Any) -> None:
    """TRL's DPOTrainer takes its reference from a PEFT model with the adapter switched off (else it keeps a
    second copy of the model): the method must make one (`Method.peft_model`)."""
    from tunelab.methods import get_method

    if not get_method(config.method).peft_model:
        raise ConfigError(f'method: task "dpo" takes its reference from the method switched off, and method '
                          f'"{config.method}" has none that TRL can use (it needs a PEFT adapter); use an adapter '
                          "method (e.g. method=lora)")


class Dpo(LmTask):
    name = "dpo"
    description = "Direct preference optimisation (TRL DPOTrainer) on prompt/chosen/rejected pairs, base as reference."
    formats = ("preference",)
    reference_model = True
    sections = ("dpo",)
    evidence = frozenset({GENERATION, FORGETTING})
    default_metrics = ("pairwise_accuracy", "reward_margin", "exact_match", "token_f1")

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        needs_switched_off_view(config)

    def validation_metrics(self, config: Any) -> list[str]:
        return ["eval_loss", "pairwise_accuracy", "reward_margin", *super().validation_metrics(config)[2:]]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> TrlPrepared:
        sample = train.sample(config.eval.train_sample, config.train.seed)
        held_out = self.held_out(config, tokenizer, held, events)
        return TrlPrepared([trl_row(row) for row in train.rows], held_out, held_out.metrics,
                           self.held_out(config, tokenizer, sample, None, held_out.metrics) if sample.rows else None,
                           options={"beta": config.dpo.beta, "max_length": config.train.max_length,
                                    **losses(config.dpo.sft_weight)})

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any,
                 metrics: list[str] | None = None) -> PairsHeldOut:
        chosen, rejected = [], []
        for row in dataset.rows:
            good, bad = encode_pair(row, tokenizer, config.train.max_length)
            chosen.append(good)
            rejected.append(bad)
        cases = self.generation_cases(dataset, tokenizer, config.eval.max_examples) if config.eval.generate else []
        if metrics is None:
            metrics, messages = fit_metrics(self.metric_names(config), [c.reference for c in cases],
                                            explicit=config.eval.metrics is not None)
            for message in messages if events is not None else ():
                events.emit("warning", message=f"{dataset.path}: {message}")
        return PairsHeldOut([], cases, tokenizer.pad_token_id, metrics, chosen=chosen, rejected=rejected,
                            beta=config.dpo.beta, lines=list(dataset.lines))

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError("DPOTrainer tokenizes and batches its own rows")

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: TrlPrepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from trl import DPOConfig, DPOTrainer

        config = trl_config(DPOConfig, args, **prepared.options)
        trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=trl_dataset(prepared.train),
                             processing_class=tokenizer, callbacks=callbacks)
        if "ref" in model.peft_config:
            model.delete_adapter("ref")  # reference = adapter switched off (see the module's docstring)
        return trainer

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: PairsHeldOut, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        result = implicit_rewards(model, held_out, config.eval.batch_size)
        generated = [m for m in want if m not in result]
        if generated and held_out.cases:
            result.update(score(model, tokenizer, PairsHeldOut([], held_out.cases, held_out.pad_id, generated),
                                config.eval).metrics)
        return result

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: PairsHeldOut, config: Any) -> Scores:
        scores = score(model, tokenizer, held_out, config.eval)  # generation only: held_out.encoded is empty
        rows = implicit_reward_rows(model, held_out, config.eval.batch_size)
        scores.metrics.update({name: values.value() for name, values in rows.items()})
        scores.rows.update(rows)
        return scores


register_task(Dpo())
