"""Batched generation with left padding: greedy by default, sampled when a temperature is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
             batch_size: int = 16, max_prompt_tokens: int = 2048, temperature: float = 0.0,
             stop: Sequence[str] = ()) -> list[str]:
    """Answers for token-id prompts (greedy unless temperature > 0); sorted by length so batches pad little.

    Generation also ends at any of the `stop` strings, and each answer is cut before the first one.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
    stopping = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = [prompts[i][-max_prompt_tokens:] for i in chunk]
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 **sampling, **stopping, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
            for row, i in enumerate(chunk):
                answers[i] = cut_at(tokenizer.decode(out[row, width:], skip_special_tokens=True), stop).strip()
    finally:
        model.train(was_training)
    return answers


def cut_at(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (generation halts on the token that completes one, keeping it)."""
    ends = [at for at in (text.find(s) for s in stops) if at >= 0]
    return text[:min(ends)] if ends else text
