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


def answer_positions(probe: Probe, length: int) -> slice:
    """The logit positions that predict a row's answer (all of them for a row with no prompt)."""
    return slice(len(probe.prompt_ids) - 1 if probe.prompt_ids else 0, length - 1)


def answer_figures(one: torch.nn.Module, two: torch.nn.Module, probes: list[Probe]) -> dict[str, float]:
    """Two models on the answer positions of the same rows: max |logit difference|, top-1 agreement, and each
    one's mean loss on the answer tokens."""
    worst, same, total, losses = 0.0, 0, 0, [0.0, 0.0]
    for p in probes:
        a, b = logits_of(one, p.ids), logits_of(two, p.ids)
        at = answer_positions(p, len(p.ids))
        targets = torch.tensor(p.ids[at.start + 1:at.stop + 1])
        worst = max(worst, float((a[at] - b[at]).abs().max()))
        same, total = same + int((a[at].argmax(-1) == b[at].argmax(-1)).sum()), total + len(targets)
        for i, logits in enumerate((a, b)):
            losses[i] += float(torch.nn.functional.cross_entropy(logits[at], targets, reduction="sum"))
    return {"max_logit_difference": worst, "top1_agreement": same / max(total, 1), "positions": total,
            "loss": [losses[0] / max(total, 1), losses[1] / max(total, 1)]}


def quantization_gap(run_model: torch.nn.Module, exported: torch.nn.Module, switched_off: Any,
                     full_model: torch.nn.Module, probes: list[Probe]) -> dict[str, Any]:
    """What a merged export of a run trained over a quantized base loses against the model the run trained (its
    adapter over the quantized base): the merge goes onto the full-precision base, so the two differ by the
    base's quantization. Measured beside the same gap between the two bases alone (`switched_off` gives a
    model with its method switched off), which is what that costs without any tuning. Reported, not gated."""
    tuned = answer_figures(run_model, exported, probes)
    with switched_off(run_model) as quantized_base, switched_off(full_model) as full_base:
        bases = answer_figures(quantized_base, full_base, probes)
    return {"rows": len(probes), "answer_positions": tuned["positions"],
            "max_logit_difference": tuned["max_logit_difference"], "answer_top1_agreement": tuned["top1_agreement"],
            "answer_loss_run": tuned["loss"][0], "answer_loss_export": tuned["loss"][1],
            "base_max_logit_difference": bases["max_logit_difference"],
            "base_answer_top1_agreement": bases["top1_agreement"],
            "note": "information: the run trained over a quantized base and the merge is onto full precision"}


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
    if "answer_loss_run" in check:
        return (f"{name}: against the run's own model (trained over a quantized base) the merged export agrees on "
                f"top-1 at {check['answer_top1_agreement']:.1%} of {check['answer_positions']:,} answer positions, max "
                f"logit difference {check['max_logit_difference']:.2f}, answer loss {check['answer_loss_run']:.4f} "
                f"(run) vs {check['answer_loss_export']:.4f} (export); the two bases alone: top-1 "
                f"{check['base_answer_top1_agreement']:.1%}, max logit difference "
                f"{check['base_max_logit_difference']:.2f}: information only (the quantization's cost, not the "
                "merge's)")
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
