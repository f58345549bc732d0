"""Held-out loss: the mean negative log-likelihood per supervised token, its standard error, and perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelab.tasks.base import IGNORE, Encoded
from tunelab.train.collate import collate


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
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=IGNORE, reduction="none").view(shift_labels.shape)
            row_nll += nll.sum(dim=1).tolist()
            row_tokens += (shift_labels != IGNORE).sum(dim=1).tolist()
    finally:
        model.train(was_training)
    loss = sum(row_nll) / max(sum(row_tokens), 1)
    out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if len(row_nll) > 1:
        out["eval_loss_se"] = ratio_se(row_nll, row_tokens, loss)
    if per_row:
        out.update(eval_row_nll=row_nll, eval_row_tokens=row_tokens)
    return out


def ratio_se(row_nll: list[float], row_tokens: list[int], loss: float) -> float:
    """Standard error of sum(nll) / sum(tokens) with rows as the sampled units (delta method).

    Rows, not tokens, are drawn independently: tokens of one answer are correlated, so a per-token
    standard error would be far too small.
    """
    n, tokens = len(row_nll), max(sum(row_tokens), 1)
    residuals = sum((nll - loss * t) ** 2 for nll, t in zip(row_nll, row_tokens))
    return math.sqrt(n / (n - 1) * residuals) / tokens
