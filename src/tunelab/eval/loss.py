"""Held-out loss: the mean negative log-likelihood per supervised token, and its perplexity."""

from __future__ import annotations

import math

import torch

from tunelab.tasks.base import IGNORE, Encoded
from tunelab.train.collate import collate


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[Encoded], pad_id: int, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted over the whole set (not a mean of batch means), so it does not depend on batching."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=IGNORE, reduction="sum")
            total_nll += nll.item()
            total_tokens += int((shift_labels != IGNORE).sum())
    finally:
        model.train(was_training)
    loss = total_nll / max(total_tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
