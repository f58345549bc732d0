"""Proof that nothing changed on the way: an exported artifact, reloaded, against the run's model on the
run's held-out rows. Logits for adapter and merged exports; top-1 and greedy agreement for GGUF."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.export.source import Probe

# max |logit difference| an fp32 adapter reload / merge may show (merging reorders float sums)
LOGIT_TOLERANCE = {"adapter": 1e-5, "merged": 1e-3}
# least top-1 agreement with the merged model on answer positions (what the tune trained) a near-lossless file type
# may show. Q8_0 has no gate: its rounding flips the top-1 of near-tied positions, at a rate that depends on the
# model's confidence (5.3% of prompt positions and none of 431 answer positions on the tuned quickstart model; 2.5%
# of a random tiny model's), so its agreement is reported and its file is proven by the round trip below.
TOP1_TOLERANCE: dict[str, float | None] = {"f32": 0.999, "f16": 0.99, "q8_0": None}
# max |logit difference| between the GGUF read back and the merged model rounded as the file type rounds it
# (export.gguf_file.rounded_like_file): a writer or reader defect shows here, the file type's cost does not
ROUND_TRIP_TOLERANCE = 1e-3


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
               gguf_tokenizer: Any, probes: list[Probe], max_new_tokens: int, rounded: torch.nn.Module) -> dict:
    """Agreement of the GGUF (read back by transformers' own GGUF reader) with the merged model, and its exact
    match with the merged model rounded as the file type rounds (`rounded`)."""
    same = total = answer_same = answer_total = 0
    round_trip = 0.0
    for p in probes:
        a, b = logits_of(merged, p.ids), logits_of(gguf_model, p.ids)
        round_trip = max(round_trip, float((logits_of(rounded, p.ids) - b).abs().max()))
        agree = a.argmax(-1) == b.argmax(-1)
        answer = agree[len(p.prompt_ids) - 1:] if p.prompt_ids else agree  # positions that predict the answer
        same, total = same + int(agree.sum()), total + agree.numel()
        answer_same, answer_total = answer_same + int(answer.sum()), answer_total + answer.numel()
    texts = [tokenizer.decode(p.ids) for p in probes]
    tokenized_alike = sum(tokenizer(t, add_special_tokens=False)["input_ids"] ==
                          gguf_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    prompts = [p.prompt_ids for p in probes if p.prompt_ids]
    eos = tokenizer.eos_token_id
    greedy_same = sum(greedy(merged, ids, max_new_tokens, eos) == greedy(gguf_model, ids, max_new_tokens, eos)
                      for ids in prompts)
    answer_top1, tolerance = answer_same / answer_total, TOP1_TOLERANCE[quant]
    return {"rows": len(probes), "positions": total, "top1_agreement": same / total,
            "answer_positions": answer_total, "answer_top1_agreement": answer_top1, "tolerance": tolerance,
            "round_trip_max_logit_difference": round_trip, "round_trip_tolerance": ROUND_TRIP_TOLERANCE,
            "greedy_prompts": len(prompts), "greedy_agreement": greedy_same / len(prompts) if prompts else None,
            "max_new_tokens": max_new_tokens, "tokenizer_agreement": tokenized_alike / len(texts),
            "passed": (tolerance is None or answer_top1 >= tolerance) and round_trip <= ROUND_TRIP_TOLERANCE
            and tokenized_alike == len(texts)}


def describe_check(name: str, check: dict[str, Any]) -> str:
    """One line a person reads: the figures, the gate, and the verdict."""
    verdict = "passed" if check.get("passed", True) else "FAILED"
    if "top1_agreement" not in check:
        gate = f" (gate {check['tolerance']:.0e})" if "tolerance" in check else ""
        return f"{name}: max logit difference {check['max_logit_difference']:.1e} over {check.get('rows', '?')} " \
               f"held-out rows{gate}: {verdict if 'passed' in check else 'information only'}"
    gate = "reported: the file type's own cost" if check["tolerance"] is None else f"gate {check['tolerance']:.1%}"
    greedy = (f"; greedy answers identical {check['greedy_agreement']:.0%} of {check['greedy_prompts']}"
              if check["greedy_agreement"] is not None else "")
    return (f"{name}: top-1 agreement {check['answer_top1_agreement']:.1%} of {check['answer_positions']:,} answer "
            f"positions ({gate}), {check['top1_agreement']:.1%} of all "
            f"{check['positions']:,}{greedy}; file vs its type's own rounding: max logit difference "
            f"{check['round_trip_max_logit_difference']:.1e} (gate {check['round_trip_tolerance']:.0e}): {verdict}")
