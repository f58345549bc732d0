"""Proof that nothing changed on the way: an exported artifact, reloaded, against the run's model on the
run's held-out rows. Logits for adapter and merged exports; top-1 and greedy agreement for GGUF."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.export.source import Probe

# max |logit difference| an fp32 adapter reload / merge may show (merging reorders float sums)
LOGIT_TOLERANCE = {"adapter": 1e-5, "merged": 1e-3}
# least top-1 agreement with the merged model a GGUF may show, per file type
TOP1_TOLERANCE = {"f32": 0.999, "f16": 0.99, "q8_0": 0.95}


@torch.no_grad()
def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """One row's logits (every position for a causal LM, the classes for a classifier), fp32 on CPU."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([ids], device=device))
    return out.logits[0].float().cpu()


def max_logit_difference(reference: torch.nn.Module, exported: torch.nn.Module, probes: list[Probe]) -> float:
    return max(float((logits_of(reference, p.ids) - logits_of(exported, p.ids)).abs().max()) for p in probes)


def logit_check(kind: str, reference: torch.nn.Module, exported: torch.nn.Module, probes: list[Probe]) -> dict:
    diff = max_logit_difference(reference, exported, probes)
    tolerance = LOGIT_TOLERANCE[kind]
    return {"rows": len(probes), "max_logit_difference": diff, "tolerance": tolerance, "passed": diff <= tolerance}


@torch.no_grad()
def greedy(model: torch.nn.Module, ids: list[int], max_new_tokens: int, eos: Any) -> list[int]:
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), device=device),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def gguf_check(quant: str, merged: torch.nn.Module, tokenizer: Any, gguf_model: torch.nn.Module,
               gguf_tokenizer: Any, probes: list[Probe], max_new_tokens: int) -> dict:
    """Agreement of the GGUF (read back by transformers' own GGUF reader) with the merged model."""
    same = total = 0
    for p in probes:
        a, b = logits_of(merged, p.ids).argmax(-1), logits_of(gguf_model, p.ids).argmax(-1)
        same, total = same + int((a == b).sum()), total + a.numel()
    texts = [tokenizer.decode(p.ids) for p in probes]
    tokenized_alike = sum(tokenizer(t, add_special_tokens=False)["input_ids"] ==
                          gguf_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    prompts = [p.prompt_ids for p in probes if p.prompt_ids]
    eos = tokenizer.eos_token_id
    greedy_same = sum(greedy(merged, ids, max_new_tokens, eos) == greedy(gguf_model, ids, max_new_tokens, eos)
                      for ids in prompts)
    top1 = same / total
    tolerance = TOP1_TOLERANCE[quant]
    return {"rows": len(probes), "positions": total, "top1_agreement": top1, "tolerance": tolerance,
            "greedy_prompts": len(prompts), "greedy_agreement": greedy_same / len(prompts) if prompts else None,
            "max_new_tokens": max_new_tokens, "tokenizer_agreement": tokenized_alike / len(texts),
            "passed": top1 >= tolerance and tokenized_alike == len(texts)}
