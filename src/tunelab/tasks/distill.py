"""Knowledge distillation: a student learns a teacher's token distributions on SFT rows.

Loss at each supervised position (completions, assistant turns): (1 - alpha) * T^2 * KL(teacher || student)
on temperature-T softmaxes, plus alpha * cross-entropy on the reference token; summed and divided by
the trainer's count of supervised tokens over the whole accumulated batch, so gradient accumulation
gives the same update as one big batch. The teacher is any local causal LM with the student's
tokenizer, loaded through the one loader; the student is `model=`, or the teacher with a subset of its
layers (`distill.student_layers`). Reported beside the student's own metrics: `gap_closed` (the share
of the teacher-student gap closed on the run's first metric) and `speedup` (the teacher's time per
generated token over the student's, both warm and generating answers of the same length).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from tunelab.data.tokens import IGNORE
from tunelab.errors import ConfigError
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, ModelSpec, load_model, load_tokenizer
from tunelab.scoring.generate import generate
from tunelab.scoring.metrics import Metric, register_metric
from tunelab.settings import Section, register_section
from tunelab.tasks.base import FORGETTING, GENERATION, ListDataset, Prepared, Scores, register_task
from tunelab.tasks.lm import HeldOut, LmTask, heldout_loss, score


class DistillSettings(Section):
    teacher: str | None = Field(None, description="The teacher: a bundled alias or a local model dir (e.g. a tuned "
                                                  "run's runs/<name>/model after merging) sharing the student's "
                                                  "tokenizer.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of both distributions in the KL term.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of cross-entropy on the reference answers; the KL "
                                                      "term gets 1 - alpha. 0: pure distillation.")
    student_layers: list[int] | int | Literal["every_other"] | None = Field(
        None, description="Build the student from the teacher, keeping these layer indices (or every_other), each "
                          "initialised from its teacher layer; model= is then set to the built student. A number "
                          "N keeps N layers, dropping the contiguous block of the others whose removal raises the "
                          "teacher's loss on the first training rows least.")


register_section("distill", DistillSettings)
BLOCK_ROWS = 32  # training rows on which distill.student_layers=N measures each block's removal
SPEED_PROMPTS = 16  # held-out prompts the speed-up is timed on
register_metric(Metric("gap_closed", "teacher gap closed", None, percent=True, higher_is_better=True))
register_metric(Metric("speedup", "speed-up over teacher", None, percent=False, higher_is_better=True))


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float, alpha: float, num_items: Any = None) -> torch.Tensor:
    """KL and cross-entropy summed over the positions predicting a supervised label, over `num_items`
    (the accumulated batch's supervised count) or else this batch's own count."""
    mask = labels[:, 1:] != IGNORE
    width = min(student_logits.size(-1), teacher_logits.size(-1))  # padded vocabularies: the same real tokens
    student = student_logits[:, :-1][mask][:, :width].float()
    teacher = teacher_logits[:, :-1][mask][:, :width].float()
    log_s = torch.log_softmax(student / temperature, dim=-1)
    log_t = torch.log_softmax(teacher / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum()
    ce = torch.nn.functional.cross_entropy(student, labels[:, 1:][mask], reduction="sum")
    total = (1 - alpha) * temperature ** 2 * kl + alpha * ce
    count = num_items if num_items is not None else mask.sum().clamp(min=1)
    return total / count


def make_trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """transformers' Trainer with the distillation loss; the loss is normalised by the accumulated count."""

        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, teacher: torch.nn.Module, temperature: float, alpha: float, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
            self.model_accepts_loss_kwargs = True  # so the trainer counts num_items_in_batch for compute_loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**forward)
            with torch.no_grad(), self.accelerator.autocast():  # the student's precision (its forward is wrapped)
                teacher_logits = self.teacher(**forward).logits
            loss = distill_loss(outputs.logits, teacher_logits, inputs["labels"], self.temperature, self.alpha,
                                num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


@dataclass
class DistillHeldOut(HeldOut):
    """The held-out set with the teacher's numbers on it and the student's first (untrained) numbers."""

    teacher: dict[str, float] = field(default_factory=dict)
    teacher_token_seconds: float | None = None
    student_before: dict[str, float] | None = None


@dataclass
class DistillPrepared(Prepared):
    teacher: Any = None
    temperature: float = 2.0
    alpha: float = 0.5


def teacher_path(config: Any) -> Any:
    if not config.distill.teacher:
        raise ConfigError("distill.teacher: expected a bundled alias or a local model dir (the model to learn from)")
    return resolve_model(config.distill.teacher)


def load_teacher(config: Any, tokenizer: Any) -> torch.nn.Module:
    """The teacher through the one loader, frozen; refused unless it shares the student's vocabulary."""
    path, rules = teacher_path(config), LoadRules.of(config)
    theirs = load_tokenizer(path, rules)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f'distill.teacher: teacher "{config.distill.teacher}" ({len(theirs)} tokens) and student '
                          f'"{config.model}" ({len(tokenizer)} tokens) have different tokenizers; distillation '
                          f"compares token distributions, so both need the same vocabulary")
    teacher = load_model(path, ModelSpec("causal_lm"), rules).eval()
    teacher.requires_grad_(False)
    return teacher


def seconds_per_token(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, config: Any) -> float | None:
    """Warm seconds per generated token: the first SPEED_PROMPTS held-out prompts each answered with exactly
    eval.max_new_tokens tokens (two models then generate alike), after an untimed pass over the same prompts
    (a first call's set-up is not the model's speed). None without generated answers."""
    prompts = [c.prompt_ids for c in held_out.cases[:SPEED_PROMPTS]]
    if not prompts or not config.eval.generate:
        return None
    tokens = config.eval.max_new_tokens

    def answer() -> None:
        generate(model, tokenizer, prompts, tokens, batch_size=config.eval.generation_batch, min_new_tokens=tokens)

    answer()
    started = time.perf_counter()
    answer()
    return (time.perf_counter() - started) / (len(prompts) * tokens)


class Distill(LmTask):
    name = "distill"
    description = "Knowledge distillation from distill.teacher into a smaller student on SFT rows (KL + CE)."
    formats = ("prompt_completion", "messages")
    sections = ("distill",)
    evidence = frozenset({GENERATION, FORGETTING})
    default_metrics = ("exact_match", "token_f1")
    chosen_by_auto = False  # the same rows train sft; distillation is asked for by name

    def resolve(self, config: Any, train: Any) -> dict[str, Any]:
        """With distill.student_layers, the student is built from the teacher (once, cached) before the run
        starts, and recorded: model= names the built student, student_layers the layers it kept."""
        layers = config.distill.student_layers
        if layers is None:
            return {}
        from tunelab.models.students import chosen_layers, student_from_teacher

        teacher = teacher_path(config)
        if isinstance(layers, int):
            layers = self.layers_by_loss(config, train, teacher, layers)
        student = student_from_teacher(teacher, chosen_layers(teacher, layers), LoadRules.of(config))
        return {"distill.student_layers": layers, "model": str(student)}

    def check(self, config: Any, datasets: tuple[Any, ...] = ()) -> None:
        teacher_path(config)

    def model_spec(self, config: Any, train: Any) -> ModelSpec:
        return ModelSpec("causal_lm")

    def layers_by_loss(self, config: Any, train: Any, teacher: Any, keep: int) -> list[int]:
        """distill.student_layers=N: the N teacher layers left when the block that costs least is dropped."""
        from tunelab.models.loading import load_pair
        from tunelab.models.students import cheapest_block

        tokenizer, model = load_pair(teacher, ModelSpec("causal_lm"), LoadRules.of(config))
        encoded = [self.encode(row, train.format, tokenizer, config.train.max_length) for row in train.rows[:BLOCK_ROWS]]
        rows = [e for e in encoded if e is not None]
        return cheapest_block(model.eval(), keep, lambda student: heldout_loss(student, rows, tokenizer.pad_token_id)
                              ["eval_loss"])[0]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        base = super().prepare(config, tokenizer, train, held, events)
        teacher = load_teacher(config, tokenizer)
        held_out = DistillHeldOut(**vars(base.held_out))
        if events is not None:
            events.emit("evaluating", which="teacher", what=f"the teacher {config.distill.teacher}")
        held_out.teacher = score(teacher, tokenizer, held_out, config.eval).metrics
        held_out.teacher_token_seconds = seconds_per_token(teacher, tokenizer, held_out, config)
        d = config.distill
        return DistillPrepared(base.train, held_out, base.metrics, base.train_sample,
                               {**base.info, "teacher": {"model": d.teacher, "metrics": held_out.teacher,
                                                         "seconds_per_token": held_out.teacher_token_seconds}},
                               teacher=teacher, temperature=d.temperature, alpha=d.alpha)

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: Prepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        from transformers import TrainingArguments

        assert isinstance(prepared, DistillPrepared)
        prepared.teacher.to(next(model.parameters()).device)
        return make_trainer_class()(model=model, args=TrainingArguments(**args),
                                    train_dataset=ListDataset(prepared.train), data_collator=self.collator(tokenizer),
                                    callbacks=callbacks, teacher=prepared.teacher,
                                    temperature=prepared.temperature, alpha=prepared.alpha)

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, config: Any) -> Scores:
        scores = score(model, tokenizer, held_out, config.eval)
        if isinstance(held_out, DistillHeldOut):
            held_out.student_before = held_out.student_before or dict(scores.metrics)
            token_seconds = seconds_per_token(model, tokenizer, held_out, config)
            scores.metrics.update(teacher_comparison(held_out, scores.metrics, token_seconds))
        return scores

    def note_before(self, held_out: Any, scores: Scores) -> None:
        if isinstance(held_out, DistillHeldOut):
            held_out.student_before = held_out.student_before or dict(scores.metrics)


def teacher_comparison(held_out: DistillHeldOut, metrics: dict[str, float],
                       token_seconds: float | None) -> dict[str, float]:
    """gap_closed on the run's first metric measured (else the held-out loss), and the speed-up per generated
    token (when both were timed)."""
    teacher = held_out.teacher_token_seconds
    out = {"speedup": teacher / max(token_seconds, 1e-12)} if teacher and token_seconds else {}
    name = next((m for m in held_out.metrics if m in metrics and m in held_out.teacher), "eval_loss")
    before, teacher = (held_out.student_before or {}).get(name), held_out.teacher.get(name)
    if before is not None and teacher is not None and abs(teacher - before) > 1e-12:
        out["gap_closed"] = (metrics[name] - before) / (teacher - before)
    return out


register_task(Distill())
