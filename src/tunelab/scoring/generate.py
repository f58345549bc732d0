"""Batched generation: greedy by default, sampled when a temperature is given.

Prompts are sorted by length and batched up to a token budget, so batches pad little and decoding,
which reads every weight once per step whatever the batch, serves many rows per read. The keys and
values live in a static cache (written in place; a growing cache copies itself at every step). When
every prompt of a batch opens with the same tokens (a chat template's system prompt, a task's fixed
instruction, the few-shot demos), the model reads that prefix once and every row starts from it: rows
are padded after the prefix instead of before it, so the prefix sits at the same positions in all.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.events import counting
from tunelab.precision import active_dtype
from tunelab.scoring.lm_loss import prompt_learning, virtual_inputs, worth_sharing

BATCH_TOKENS = 16384  # prompt and answer tokens per batch: bounds the cache (0.75 GiB on SmolLM2-135M)


def generate(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
             batch_size: int = 64, max_prompt_tokens: int = 2048, temperature: float = 0.0,
             stop: Sequence[str] = (), min_new_tokens: int = 0, top_p: float = 0.95) -> list[str]:
    """Answers for token-id prompts (greedy unless temperature > 0), in the order of the prompts.

    An answer also ends at any of the `stop` strings once it has begun (`AnswerStops`), and is cut before it;
    `min_new_tokens` holds off the end-of-sequence token until that many (to time generation per token).
    """
    return generate_counted(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt_tokens, temperature,
                            stop, min_new_tokens, top_p)[0]


@torch.no_grad()
def generate_counted(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int = 64, max_prompt_tokens: int = 2048, temperature: float = 0.0,
                     stop: Sequence[str] = (), min_new_tokens: int = 0,
                     top_p: float = 0.95) -> tuple[list[str], list[int]]:
    """`generate`'s answers and the tokens each one decoded (up to its end token or stop, what it cost)."""
    from transformers import StoppingCriteriaList

    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": tokenizer.eos_token_id,
               "disable_compile": True, **({"do_sample": True, "temperature": temperature, "top_p": top_p}
                                           if temperature > 0 else {"do_sample": False}),
               **({"min_new_tokens": min_new_tokens} if min_new_tokens else {})}
    prompts = [p[-max_prompt_tokens:] for p in prompts]
    answers: list[str] = [""] * len(prompts)
    decoded = [0] * len(prompts)
    try:
        with counting("generating answers", len(prompts)) as counter:
            for chunk in batches(prompts, batch_size, max_new_tokens, same_length=virtual_inputs(model)):
                rows = [prompts[i] for i in chunk]
                width = max(len(p) for p in rows)
                steps = DecodeSteps(counter, len(chunk), max_new_tokens)
                criteria = [steps, *([AnswerStops(tokenizer, stop, width)] if stop else [])]
                for i, ids in zip(chunk, generate_rows(model, rows, pad_id, {**options, "stopping_criteria":
                                                                               StoppingCriteriaList(criteria)})):
                    answers[i] = cut_at(tokenizer.decode(ids[width:], skip_special_tokens=True), stop).strip()
                    decoded[i] = answer_length(ids[width:].tolist(), {pad_id, tokenizer.eos_token_id})
                counter.set(steps.start + len(chunk))
    finally:
        model.train(was_training)
    return answers, decoded


def answer_length(ids: list[int], ends: set[int]) -> int:
    """Tokens decoded before the first end-of-sequence or padding token (a row done before its batch is padded)."""
    return next((i for i, token in enumerate(ids) if token in ends), len(ids))


class DecodeSteps(StoppingCriteria):
    """Never stops generation: counts its decoding steps so a batch's progress shows while it decodes (a batch of
    every held-out prompt is one `generate` call of minutes on a CPU)."""

    def __init__(self, counter: Any, rows: int, max_new_tokens: int):
        self.counter, self.rows, self.max_new_tokens, self.steps = counter, rows, max_new_tokens, 0
        self.start = counter.done

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.steps += 1  # rows count as done in step with the tokens decoded; whole when the batch returns
        self.counter.set(self.start + self.rows * min(self.steps, self.max_new_tokens) // (self.max_new_tokens + 1))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class AnswerStops:
    """A transformers stopping criterion: a row is done once its answer (the tokens after its prompt, leading
    whitespace skipped) holds a stop string. transformers' own `stop_strings` also match text that begins in
    the prompt: a prompt ending in a newline and an answer opening with one made a blank line, and the
    answer ended empty before it began."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, tuple(stops), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        done = [any(stop in text.lstrip() for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def batches(prompts: list[list[int]], batch_size: int, max_new_tokens: int,
            same_length: bool = False) -> list[list[int]]:
    """Prompt indices by length, cut into batches of at most batch_size rows and BATCH_TOKENS tokens; with
    `same_length`, of one prompt length each, so no row is padded (`lm_loss.virtual_inputs`)."""
    out: list[list[int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
        width = len(prompts[i]) + max_new_tokens  # the longest row so far: prompts come shortest first
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * width <= BATCH_TOKENS \
                and not (same_length and len(prompts[out[-1][0]]) != len(prompts[i])):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def generate_rows(model: torch.nn.Module, rows: list[list[int]], pad_id: int, options: dict[str, Any]) -> torch.Tensor:
    """The model's output ids for one batch: the padded prompts, then the answers."""
    device = next(model.parameters()).device
    virtual_tokens = prompt_learning(model)
    shared = 0 if virtual_tokens else shared_length(rows, model)
    width = max(len(p) for p in rows)
    ids = torch.tensor([p[:shared] + [pad_id] * (width - len(p)) + p[shared:] for p in rows], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * (len(p) - shared) for p in rows], device=device)
    max_len = width + options["max_new_tokens"]
    cache = prefix_cache(model, ids[:1, :shared], len(rows), max_len) if shared else None
    if cache is None and not virtual_tokens:  # prompt learning prepends virtual tokens: its own (dynamic) cache
        cache = static_cache(model, max_len)
    return model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **options)


def shared_length(rows: list[list[int]], model: torch.nn.Module) -> int:
    """Leading tokens every row shares (each keeps at least one of its own); 0 when sharing would not pay."""
    if len(rows) < 2:
        return 0
    limit = min(len(p) for p in rows) - 1
    length = 0
    while length < limit and all(p[length] == rows[0][length] for p in rows):
        length += 1
    return worth_sharing(length, limit, model)


def prefix_cache(model: torch.nn.Module, prefix: torch.Tensor, rows: int, max_len: int) -> Any:
    """A static cache holding the prefix's keys and values for every row, the prefix read by the model once;
    None for a model whose cache is not a plain per-layer one (it then reads each row's prefix itself)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    once = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
    if type(once) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in once.layers):
        return None
    cache = static_cache(model, max_len)
    for index, layer in enumerate(once.layers):
        cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
    return cache


def static_cache(model: torch.nn.Module, max_len: int) -> Any:
    """An empty static cache that stores keys and values in the dtype the model computes in now: its own,
    or autocast's."""
    weight = next(model.parameters())
    return one_dtype_cache_class()(active_dtype(weight.device.type, weight.dtype), config=model.config,
                                   max_cache_len=max_len)


@functools.cache
def one_dtype_cache_class() -> type:
    """transformers' StaticCache, casting what it stores to one dtype. Under autocast a decoder layer hands the
    cache its values in bf16 but its keys in fp32 (the rotary embedding multiplies them in fp32), and a static
    cache, allocated once in the dtype of the first keys it sees, takes only one of them."""
    from transformers import StaticCache

    class OneDtypeCache(StaticCache):
        def __init__(self, dtype: torch.dtype, **kwargs: Any):
            super().__init__(**kwargs)
            self.store_dtype = dtype

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return super().update(key_states.to(self.store_dtype), value_states.to(self.store_dtype), *args, **kwargs)

    return OneDtypeCache


def cut_at(text: str, stops: Sequence[str]) -> str:
    """The answer before the first stop string after its leading whitespace (generation halts on the token
    that completes one, keeping it)."""
    text = text.lstrip()
    ends = [at for at in (text.find(s) for s in stops) if at >= 0]
    return text[:min(ends)] if ends else text
