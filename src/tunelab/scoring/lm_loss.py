"""Causal-LM loss with the output head applied only where a label is supervised.

A model's own forward projects every position onto the whole vocabulary (49k columns on SmolLM2) and
then throws away the prompt and padding positions. Here the decoder runs once, the supervised
positions are gathered, and only those meet the head: the same loss for far less compute and memory.
Models whose head does more than a linear map (logit soft-capping, a logit scale) and prompt-learning
adapters (virtual tokens change the positions) keep the model's own forward.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, head) of a causal LM, a PEFT-wrapped one too; None when the shortcut would change the loss."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(m._forward_pre_hooks or m._forward_hooks for m in (model, base)):
        return None  # something hooks the model's own forward (diff-pruning chooses its mask there): keep calling it
    config = getattr(base, "config", None)
    if config is None or any(getattr(config, key, None) not in (None, 1, 1.0) for key in _HEAD_EXTRAS):
        return None
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    decoder = get_decoder() if get_decoder else None
    head = get_head() if get_head else None
    return (decoder, head) if decoder is not None and head is not None and decoder is not base else None


def supervised_nll(parts: tuple[torch.nn.Module, torch.nn.Module],
                   batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per supervised position: its negative log-likelihood (fp32) and the batch row it belongs to.

    Position i predicts label i+1, as in the model's own loss. A batch with `position_ids` and no
    `attention_mask` is a flattened one: the decoder reads document boundaries from the position ids.
    """
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    nll = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    return nll, keep.nonzero()[:, 0]
