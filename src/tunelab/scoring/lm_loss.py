"""Causal-LM loss with the output head applied only where a label is supervised.

A model's own forward projects every position onto the whole vocabulary (49k columns on SmolLM2) and
then throws away the prompt and padding positions. Here the decoder runs once, the supervised
positions are gathered, and only those meet the head: the same loss for far less compute and memory.
Models whose head does more than a linear map (logit soft-capping, a logit scale) and prompt-learning
adapters (virtual tokens change the positions) keep the model's own forward.

Rows of a batch often open with the same tokens: a chat template's system prompt, a task's fixed
instruction. With `shared_prefix`, the decoder reads that prefix once and every row continues from its
keys and values (expanded over the batch, gradients flowing back through them): causal attention makes
the prefix's states the same for every row, so the loss and the gradients are those of the whole
batch, for the compute of one prefix instead of one per row.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100
MIN_SHARED = 8  # a shorter shared prefix saves less than the extra decoder call costs
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, head) of a causal LM, a PEFT-wrapped one too; None when the shortcut would change the loss."""
    if prompt_learning(model):
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


def prompt_learning(model: torch.nn.Module) -> bool:
    """Whether a PEFT prompt-learning adapter (prompt, prefix, p-tuning) is active: it adds virtual tokens."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def virtual_inputs(model: torch.nn.Module) -> bool:
    """Whether a prompt-learning adapter enters as input embeddings in front of the prompt (prompt tuning,
    p-tuning). PEFT then drops `position_ids`, so positions count on through any left padding and a padded
    row reads its prompt at other positions than alone; prefix tuning enters through the cache instead."""
    config = getattr(model, "active_peft_config", None)
    return prompt_learning(model) and getattr(config, "peft_type", None) != "PREFIX_TUNING"


def worth_sharing(common: int, limit: int, model: torch.nn.Module) -> int:
    """The shared prefix to use: `common` leading tokens, at most `limit` and within the model's attention
    window; 0 when that is under MIN_SHARED tokens."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    length = min(common, limit, window - 1) if window else min(common, limit)
    return length if length >= MIN_SHARED else 0


def supervised_nll(parts: tuple[torch.nn.Module, torch.nn.Module], batch: dict[str, Any],
                   shared_prefix: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per supervised position: its negative log-likelihood (fp32) and the batch row it belongs to.

    Position i predicts label i+1, as in the model's own loss. A batch with `position_ids` and no
    `attention_mask` is a flattened one: the decoder reads document boundaries from the position ids.
    """
    decoder, head = parts
    start = shared_length(decoder, batch) if shared_prefix else 0
    if start:
        hidden = suffix_hidden(decoder, batch, start)
    else:
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    targets = batch["labels"][:, start + 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    nll = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    return nll, keep.nonzero()[:, 0]


def takes_logits_mask(model: torch.nn.Module) -> bool:
    """Whether the model's own forward applies its head only where a boolean `logits_to_keep` says (transformers'
    causal LMs); a PEFT wrapper passes the argument through to it."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def forward_nll(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """`supervised_nll`'s losses (same positions, same order) through the model's own forward, for a model that a
    DDP, FSDP or DeepSpeed wrapper must see called: DDP syncs gradients only for a forward made through it, and a
    sharded engine gathers weights in its forward hooks. The head still meets only the supervised positions."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch.get("position_ids"), use_cache=False, logits_to_keep=keep).logits
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise RuntimeError(f"{type(model).__name__}'s forward ignored a boolean logits_to_keep (logits of shape "
                           f"{tuple(logits.shape)}); set speed.supervised_head=false for this model")
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="none")


def shared_length(decoder: torch.nn.Module, batch: dict[str, Any]) -> int:
    """How many leading tokens every row shares and no loss reads (0 when sharing them would not pay).

    The prefix ends before the position that predicts the first supervised label of any row, so every
    supervised prediction is made in the rows' own part.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch.get("attention_mask")
    if ids.shape[0] < 2 or "position_ids" in batch or getattr(decoder, "gradient_checkpointing", False):
        return 0  # checkpointed layers drop the cache the rows would continue from
    same = (ids == ids[:1]).all(0) if mask is None else ((ids == ids[:1]) & mask.bool()).all(0)
    common = int(same.long().cumprod(0).sum())
    supervised = (labels != IGNORE).any(0)
    first_label = int(supervised.long().argmax()) if bool(supervised.any()) else ids.shape[1]
    return worth_sharing(common, min(first_label, ids.shape[1]) - 1, decoder)


def suffix_hidden(decoder: torch.nn.Module, batch: dict[str, Any], start: int) -> torch.Tensor:
    """The decoder's last hidden states at positions start.. of every row, the first `start` tokens read once."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    cache = decoder(input_ids=ids[:1, :start], use_cache=True).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    return decoder(input_ids=ids[:, start:], attention_mask=mask, past_key_values=cache,
                   use_cache=True).last_hidden_state
