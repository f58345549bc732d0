"""What every language-model task shares: token ids with labels (IGNORE where no loss is taken),
right-padded batches, token-weighted held-out loss, and scoring by greedy generation.

`sft` and `causal_lm` subclass `LmTask` and say only which row formats they take: how a row becomes
ids and labels, and a held-out row a prompt with its reference answer, is the format's (`data.formats`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tunelab.data.formats import get_format
from tunelab.data.token_table import token_rows
from tunelab.data.tokens import IGNORE, encode_text
from tunelab.errors import DataError
from tunelab.events import counting
from tunelab.scoring.cost import PeakMemory, answer_cost, stopwatch
from tunelab.scoring.generate import generate, generate_counted
from tunelab.scoring.lm_loss import forward_nll, lm_parts, supervised_nll, takes_logits_mask
from tunelab.scoring.metrics import describe, fit_metrics, generation_rows, generation_scores
from tunelab.scoring.rows import RowValues, exp_ratio
from tunelab.settings import Section, register_section
from tunelab.tasks.base import FORGETTING, GENERATION, ListDataset, Prepared, Scores, Task


class SpeedSettings(Section):
    """Training shortcuts that leave the loss unchanged; each is measured in benchmarks/RESULTS.md."""

    supervised_head: bool = Field(True, description="Apply the output head only at supervised tokens (same loss, "
                                                    "less compute); off: the model's own full-vocabulary forward.")
    padding_free: bool = Field(False, description="Train on flattened batches: a micro-batch's examples back to back "
                                                  "in one row, no padding, attention kept within each example.")
    shared_prefix: bool = Field(True, description="Read the leading tokens that every row of a micro-batch shares "
                                                  "(a system prompt, a fixed instruction) once for the batch; "
                                                  "same loss, less compute.")
    group_by_length: bool = Field(False, description="Draw micro-batches of similar length (less padding); "
                                                     "changes the data order.")
    compile: bool = Field(False, description="torch.compile each decoder layer. Off: on one CPU core it cost "
                                             "70 s to compile, then ran steps 14% faster in a profile and 6% "
                                             "slower in a 12-step bench (benchmarks/RESULTS.md).")


register_section("speed", SpeedSettings)


@dataclass
class Encoded:
    """One example ready for the collator: labels are IGNORE wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    line: int = 0  # the data file's line it came from (0: not from a file)

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)

    def as_row(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class GenerationCase:
    """A held-out prompt (token ids as the model saw them in training) and the reference answer.

    `line` is the data file's line of the row it came from: baselines, scores and samples are matched
    on it, never on position, since a row may yield no case.
    """

    prompt_ids: list[int]
    reference: str
    prompt_text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass
class HeldOut:
    """A held-out set prepared once and scored before and after training."""

    encoded: list[Encoded]
    cases: list[GenerationCase]
    pad_id: int
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "token_f1"])
    stop: tuple[str, ...] = ()  # an answer ends at these strings (Format.answer_end), for every model scored
    cost_rows: int = 0  # the first cases also answered one at a time, to time an answer unbatched (scoring.cost)


def truncate(ids: list[int], labels: list[int], max_length: int) -> Encoded:
    cut = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated=cut)


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batches; labels are padded with IGNORE by length, never by token id (padding labels
    by id masks the EOS label when pad == eos, as with SmolLM2, and the model never learns to stop)."""
    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


class Collator:
    """Trainer-facing collator over dataset rows holding input_ids and labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate([Encoded(list(r["input_ids"]), list(r["labels"])) for r in rows], self.pad_id)


class FlatCollator:
    """Padding-free batches: transformers' flattening collator (the micro-batch in one row, position ids
    restarting at each example, each example's first label IGNORE so no loss crosses a boundary).

    It adds an all-ones attention mask only so that the Trainer counts every token as input;
    `LmTrainer` drops it before the forward, where the position ids mark the boundaries (a mask would
    hide them and let examples attend to each other).
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_tensors="pt")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.flatten([{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in rows])
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch


@dataclass
class LmPrepared(Prepared):
    """An LM task's prepared data and the speed settings its trainer follows."""

    speed: SpeedSettings = field(default_factory=SpeedSettings)


@functools.cache
def lm_trainer_class() -> type:
    """transformers' Trainer with one change: the loss applies the output head only at supervised tokens
    (`scoring.lm_loss`), normalised by the Trainer's token count so gradient accumulation is exact."""
    from accelerate.utils import DistributedType
    from transformers import Trainer

    class LmTrainer(Trainer):
        supervised_head = True
        shared_prefix = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "position_ids" in inputs:  # flattened: see FlatCollator
                inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
            plain = self.accelerator.unwrap_model(model)
            # On several processes the engine's wrapper (DDP, FSDP, DeepSpeed) must see the forward: the decoder
            # called directly would train each rank on its own gradients.
            wrapped = self.accelerator.distributed_type != DistributedType.NO
            parts = lm_parts(plain) if self.supervised_head and not return_outputs else None
            if parts is None or (wrapped and not takes_logits_mask(plain)):
                extra = {"use_cache": False} if "position_ids" in inputs else {}
                return super().compute_loss(model, {**inputs, **extra}, return_outputs, num_items_in_batch)
            with self.accelerator.autocast():  # the decoder is called directly, not through the model's forward,
                nll = forward_nll(model, inputs) if wrapped else \
                    supervised_nll(parts, inputs, self.shared_prefix)[0]  # which accelerate wraps in autocast
            if num_items_in_batch is None:  # the Trainer then divides by the accumulation steps itself
                return nll.sum() / max(nll.numel(), 1)
            loss = nll.sum() / num_items_in_batch
            # Mirrors Trainer.compute_loss: the count was summed over processes, the gradients are averaged.
            return loss * self.accelerator.num_processes if self.args.average_tokens_across_devices else loss

    return LmTrainer


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile in place, layer by layer: the decoder's layers share one compiled graph (minutes to compile,
    not one graph per layer), and the weights keep their names, so checkpoints and adapters are unchanged."""
    parts = lm_parts(model)
    layers = getattr(parts[0], "layers", None) if parts is not None else None
    for module in layers if isinstance(layers, torch.nn.ModuleList) else [model]:
        module.compile(dynamic=True)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[Encoded], pad_id: int, batch_size: int = 8,
                 per_row: bool = False) -> dict[str, Any]:
    """Token-weighted over the whole set (not a mean of batch means), so it does not depend on batching.

    `eval_loss_se` (present from two rows on) is the loss's standard error over rows. With per_row,
    also each row's summed loss and token count (`eval_row_nll`, `eval_row_tokens`): two validations
    of the same rows then give the standard error of their difference, which their own two overstate.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    row_nll, row_tokens = [], []
    parts = lm_parts(model)
    try:
        with counting("scoring loss", len(examples)) as counter:
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size], pad_id)
                nll, tokens = row_losses(model, parts, {k: v.to(device) for k, v in batch.items()})
                row_nll += nll
                row_tokens += tokens
                counter.advance(len(nll))
    finally:
        model.train(was_training)
    loss = sum(row_nll) / max(sum(row_tokens), 1)
    out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if len(row_nll) > 1:
        out["eval_loss_se"] = ratio_se(row_nll, row_tokens, loss)
    if per_row:
        out.update(eval_row_nll=row_nll, eval_row_tokens=row_tokens)
    return out


def row_losses(model: torch.nn.Module, parts: Any, batch: dict[str, torch.Tensor]) -> tuple[list[float], list[int]]:
    """Each row's summed loss and supervised-token count; through the supervised-only head when `parts`."""
    if parts is not None:
        nll, rows = supervised_nll(parts, batch, shared_prefix=True)
        n = batch["input_ids"].shape[0]
        sums = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
        return sums.tolist(), torch.bincount(rows, minlength=n).tolist()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["input_ids"].size(1):]  # prompt learning puts virtual-token positions first
    shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                            ignore_index=IGNORE, reduction="none").view(shift_labels.shape)
    return nll.sum(dim=1).tolist(), (shift_labels != IGNORE).sum(dim=1).tolist()


def ratio_se(row_nll: list[float], row_tokens: list[int], loss: float) -> float:
    """Standard error of sum(nll) / sum(tokens) with rows as the sampled units (delta method).

    Rows, not tokens, are drawn independently: tokens of one answer are correlated, so a per-token
    standard error would be far too small.
    """
    n, tokens = len(row_nll), max(sum(row_tokens), 1)
    residuals = sum((nll - loss * t) ** 2 for nll, t in zip(row_nll, row_tokens))
    return math.sqrt(n / (n - 1) * residuals) / tokens


def loss_rows(keys: list[int], loss: dict[str, Any]) -> dict[str, RowValues]:
    """eval_loss and perplexity row by row from `heldout_loss(per_row=True)`'s (summed loss, tokens) per row."""
    units = np.column_stack([np.asarray(loss["eval_row_nll"], dtype=float),
                             np.asarray(loss["eval_row_tokens"], dtype=float)])
    return {"eval_loss": RowValues(keys, units), "perplexity": RowValues(keys, units, exp_ratio)}


def score(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, eval_cfg: Any) -> Scores:
    """Loss metrics over the encoded rows (when any), generation metrics over the cases (when asked), each
    also row by row."""
    metrics: dict[str, Any] = {}
    rows: dict[str, RowValues] = {}
    if held_out.encoded:
        metrics = heldout_loss(model, held_out.encoded, held_out.pad_id, batch_size=eval_cfg.batch_size, per_row=True)
        rows = loss_rows([e.line for e in held_out.encoded], metrics)
        metrics = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    samples: list[dict[str, Any]] = []
    cost = None
    if held_out.cases and eval_cfg.generate:
        answers, cost = answer_all(model, tokenizer, held_out, eval_cfg)
        refs, lines = [c.reference for c in held_out.cases], [c.line for c in held_out.cases]
        metrics.update(generation_scores(held_out.metrics, answers, refs))
        rows.update(generation_rows(held_out.metrics, answers, refs, lines))
        samples = [{"line": c.line, "prompt": c.prompt_text, "reference": c.reference, "output": a}
                   for c, a in zip(held_out.cases, answers)]
    return Scores(metrics, samples, rows, cost)


def answer_all(model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, eval_cfg: Any) -> tuple[list[str], dict]:
    """The answers to every held-out case, generated in batches, and what an answer cost (`scoring.cost`)."""
    prompts = [c.prompt_ids for c in held_out.cases]
    with PeakMemory() as peak, stopwatch() as took:
        answers, decoded = generate_counted(model, tokenizer, prompts, eval_cfg.max_new_tokens,
                                            batch_size=eval_cfg.generation_batch, stop=held_out.stop)
    return answers, answer_cost([len(p) for p in prompts], decoded, took[0], peak.bytes,
                                one_at_a_time(model, tokenizer, prompts[:held_out.cost_rows], eval_cfg, held_out.stop))


def one_at_a_time(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], eval_cfg: Any,
                  stop: tuple[str, ...]) -> tuple[int, float]:
    """(answers, seconds) for these prompts answered one per call, as a service answers lone requests."""
    with stopwatch() as took:
        for prompt in prompts:
            generate(model, tokenizer, [prompt], eval_cfg.max_new_tokens, batch_size=1, stop=stop)
    return len(prompts), took[0]


class LmTask(Task):
    """A task whose model is a causal LM trained on token labels."""

    evidence = frozenset({FORGETTING})
    sections = ("speed",)

    @property
    def generative(self) -> bool:
        return GENERATION in self.evidence

    def encode(self, row: dict[str, Any], fmt: str, tokenizer: Any, max_length: int) -> Encoded:
        """The row's ids and labels as its format builds them, cut from the end at max_length."""
        ids, labels = get_format(fmt).encode(row, tokenizer)
        return truncate(ids, labels, max_length)

    def generation_case(self, row: dict[str, Any], fmt: str, tokenizer: Any) -> GenerationCase | None:
        prompt = get_format(fmt).generation_prompt(row, tokenizer)
        return GenerationCase(prompt.ids, prompt.reference, prompt.text) if prompt is not None else None

    def validation_metrics(self, config: Any) -> list[str]:
        generated = self.metric_names(config) if self.generative and config.eval.generate else []
        return ["eval_loss", "perplexity", *[m for m in generated if describe(m).compute is not None]]

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        from tunelab.data.general import replay_texts

        t = config.train

        def encode() -> Iterator[dict[str, list[int]]]:
            examples = self.encode_all(train, tokenizer, t.max_length, events)
            examples += replay_examples(replay_texts(), config.data.replay_fraction, len(examples), tokenizer,
                                        t.max_length, t.seed)
            return (e.as_row() for e in examples)

        sample = train.sample(config.eval.train_sample, t.seed)
        # Only the held-out set every column answers is timed one answer at a time (the train sample is not).
        held_out = replace(self.held_out(config, tokenizer, held, events), cost_rows=config.eval.cost_rows)
        return LmPrepared(token_rows(encode), held_out, held_out.metrics,
                          self.held_out(config, tokenizer, sample, None, held_out.metrics) if sample.rows else None,
                          speed=config.speed or SpeedSettings())

    def encode_all(self, dataset: Any, tokenizer: Any, max_length: int, events: Any) -> list[Encoded]:
        """Encode every row; rows left with nothing to learn after truncation are reported, then skipped."""
        encoded, empty, cut = [], [], 0
        for row, line in zip(dataset.rows, dataset.lines):
            example = self.encode(row, dataset.format, tokenizer, max_length)
            example.line = line
            cut += example.truncated
            if example.supervised == 0:
                empty.append(line)
                continue
            encoded.append(example)
        if events is not None and cut:
            events.emit("warning", message=f"{dataset.path}: {cut} row(s) longer than train.max_length={max_length} "
                                           "tokens were cut from the end")
        if events is not None and empty:
            events.emit("warning", message=f"{dataset.path}: skipped {len(empty)} row(s) with no supervised token "
                                           f"within train.max_length={max_length} (lines {_lines(empty)})")
        if not encoded:
            raise DataError(f"{dataset.path}: no row has a supervised token within train.max_length={max_length}")
        return encoded

    def held_out(self, config: Any, tokenizer: Any, dataset: Any, events: Any,
                 metrics: list[str] | None = None) -> HeldOut:
        """Encoded rows for the loss, generation cases for the metrics (`metrics` None: fitted to the references)."""
        encoded = self.encode_all(dataset, tokenizer, config.train.max_length, events)
        cases = self.generation_cases(dataset, tokenizer, config.eval.max_examples) if self.generative else []
        if metrics is None:
            metrics, messages = fit_metrics(self.metric_names(config), [c.reference for c in cases],
                                            explicit=config.eval.metrics is not None)
            for message in messages if events is not None else ():
                events.emit("warning", message=f"{dataset.path}: {message}")
        end = get_format(dataset.format).answer_end([c.reference for c in cases])
        return HeldOut(encoded, cases, tokenizer.pad_token_id, metrics, stop=(end,) if end else ())

    def generation_cases(self, dataset: Any, tokenizer: Any, max_examples: int) -> list[GenerationCase]:
        """A case for each of the first max_examples rows (0: all) that has one, tagged with the row's line."""
        cases = []
        for row, line in list(zip(dataset.rows, dataset.lines))[: max_examples or None]:
            case = self.generation_case(row, dataset.format, tokenizer)
            if case is not None:
                case.line = line
                cases.append(case)
        return cases

    def collator(self, tokenizer: Any) -> Collator:
        return Collator(tokenizer.pad_token_id)

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: Prepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        """The LM trainer with the run's speed settings: supervised-only head, flattened or length-grouped batches."""
        from transformers import TrainingArguments

        speed = getattr(prepared, "speed", None) or SpeedSettings()
        if speed.group_by_length:
            args = {**args, "train_sampling_strategy": "group_by_length"}
        trainer = lm_trainer_class()(model=model, args=TrainingArguments(**args),
                                     train_dataset=ListDataset(prepared.train), callbacks=callbacks,
                                     data_collator=FlatCollator() if speed.padding_free else self.collator(tokenizer))
        trainer.supervised_head = speed.supervised_head
        trainer.shared_prefix = speed.shared_prefix
        if speed.compile:
            compile_layers(model)
        return trainer

    def validate(self, model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, config: Any,
                 want: tuple[str, ...] = ()) -> dict[str, float]:
        # Per-row losses let the fit diagnosis pair two validations of the same rows (eval/diagnosis.py).
        result = heldout_loss(model, held_out.encoded, held_out.pad_id, config.eval.batch_size, per_row=True)
        generated = [m for m in want if m not in result]
        if generated and held_out.cases:
            answers = generate(model, tokenizer, [c.prompt_ids for c in held_out.cases], config.eval.max_new_tokens,
                               batch_size=config.eval.generation_batch, stop=held_out.stop)
            result.update(generation_scores(generated, answers, [c.reference for c in held_out.cases]))
        return result

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, held_out: HeldOut, config: Any) -> Scores:
        return score(model, tokenizer, held_out, config.eval)


def _lines(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")


def text_windows(texts: list[str], tokenizer: Any, window: int) -> list[Encoded]:
    """Each passage (with EOS) cut into windows of at most `window` tokens, every token supervised."""
    out = []
    for text in texts:
        ids, _ = encode_text(text, tokenizer)
        out += [Encoded(ids[i:i + window], ids[i:i + window]) for i in range(0, len(ids), window)]
    return out


def replay_examples(texts: list[str], fraction: float, n_train: int, tokenizer: Any, max_length: int,
                    seed: int) -> list[Encoded]:
    """General-text windows making up `fraction` of the training mix (cycled when the texts run out)."""
    import random

    if fraction <= 0:
        return []
    pool = text_windows(texts, tokenizer, window=max_length)
    want = round(fraction * n_train / (1 - fraction))
    rng = random.Random(seed)
    picked: list[Encoded] = []
    while len(picked) < want:
        picked += rng.sample(pool, min(len(pool), want - len(picked)))
    return picked
