"""Direct preference optimisation (TRL's DPOTrainer) on prompt/chosen/rejected pairs, with an adapter.

The reference model is the base: the method's adapter switched off (`Method.disabled`), never a second
copy in memory. TRL 1.16 would instead add a frozen copy of the adapter named "ref" and use that; it is
removed after the trainer is built, so TRL falls back to disabling the adapter (the same base for a
freshly initialised LoRA, and the true base for methods whose start is not the identity). A method with
no switched-off view (`full`) is refused before the model loads.

Held out: the implicit reward r = beta * (log pi(answer|prompt) - log pi_ref(answer|prompt));
`pairwise_accuracy` is the share of pairs with r(chosen) > r(rejected), `reward_margin` the mean
r(chosen) - r(rejected), `eval_loss` the DPO loss. Before training the policy is the reference: every
implicit reward is 0, so accuracy 0, margin 0 and loss log 2 (TRL's own definitions). Greedy answers are
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
from tunelab.models.loading import ModelSpec
from tunelab.scoring.metrics import fit_metrics, pairwise_scores
from tunelab.settings import Section, register_section
from tunelab.tasks.base import FORGETTING, GENERATION, Scores, register_task
from tunelab.tasks.lm import Encoded, HeldOut, LmTask, heldout_loss, score, truncate
from tunelab.tasks.preference import TrlPrepared, render_pair, trl_config, trl_dataset, trl_row


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


def losses(sft_weight: float) -> dict[str, Any]:
    """TRL's loss settings: plain DPO (sigmoid), or DPO plus weighted cross-entropy on the chosen answers."""
    if not sft_weight:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}


def encode_answer(prompt: str, answer: str, tokenizer: Any, max_length: int) -> Encoded:
    """prompt + answer (+ EOS unless the chat template already ended the turn), loss on the answer only."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids or answer_ids[-1] != tokenizer.eos_token_id:
        answer_ids.append(tokenizer.eos_token_id)
    return truncate(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids, max_length)


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


def implicit_rewards(model: torch.nn.Module, held: PairsHeldOut, batch_size: int) -> dict[str, float]:
    """DPO loss, pairwise accuracy and margin of the implicit rewards over the held-out pairs."""
    def rewards(examples: list[Encoded]) -> list[float]:
        policy = answer_logps(model, examples, held.pad_id, batch_size)
        reference = reference_logps(model, examples, held.pad_id, batch_size)
        return [held.beta * (p - r) for p, r in zip(policy, reference)]

    chosen, rejected = rewards(held.chosen), rewards(held.rejected)
    losses = [math.log1p(math.exp(-(c - r))) if c - r > -30 else r - c for c, r in zip(chosen, rejected)]
    return {"eval_loss": sum(losses) / max(len(losses), 1), **pairwise_scores(chosen, rejected)}


def needs_switched_off_view(config: Any) -> None:
    from tunelab.methods import get_method
    from tunelab.methods.base import Method

    if type(get_method(config.method)).disabled is Method.disabled:
        raise ConfigError(f'method: task "dpo" takes its reference from the method switched off, and method '
                          f'"{config.method}" has none; use an adapter method (e.g. method=lora)')


class Dpo(LmTask):
    name = "dpo"
    description = "Direct preference optimisation (TRL DPOTrainer) on prompt/chosen/rejected pairs, base as reference."
    formats = ("preference",)
    reference_model = True
    sections = ("dpo",)
    evidence = frozenset({GENERATION, FORGETTING})
    default_metrics = ("pairwise_accuracy", "reward_margin", "exact_match", "token_f1")

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        needs_switched_off_view(config)
        return ModelSpec(self.model_kind)

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
            prompt, good, bad = render_pair(row, tokenizer)
            chosen.append(encode_answer(prompt, good, tokenizer, config.train.max_length))
            rejected.append(encode_answer(prompt, bad, tokenizer, config.train.max_length))
        cases = self.generation_cases(dataset, tokenizer, config.eval.max_examples) if config.eval.generate else []
        if metrics is None:
            metrics, messages = fit_metrics(self.metric_names(config), [c.reference for c in cases],
                                            explicit=config.eval.metrics is not None)
            for message in messages if events is not None else ():
                events.emit("warning", message=f"{dataset.path}: {message}")
        return PairsHeldOut([], cases, tokenizer.pad_token_id, metrics, chosen=chosen, rejected=rejected,
                            beta=config.dpo.beta)

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError("DPOTrainer tokenizes and batches its own rows")

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: TrlPrepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from peft import PeftModel
        from trl import DPOConfig, DPOTrainer

        if not isinstance(model, PeftModel):
            raise ConfigError('task "dpo" trains an adapter against the base (the adapter switched off); this model '
                              "has no adapter: use an adapter method (e.g. method=lora)")
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
        scores.metrics.update(implicit_rewards(model, held_out, config.eval.batch_size))
        return scores


register_task(Dpo())
