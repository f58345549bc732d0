"""The catastrophic-forgetting probe, and replay as its remedy.

General ability is measured before and after a run on shipped data that is not the user's domain:
perplexity on general English text, and accuracy on general questions the bundled base model
answers correctly. Replay mixes other shipped general text into training (never the probe's text,
which would hide the loss it measures).
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from tunelab.eval.generate import generate
from tunelab.eval.loss import heldout_loss
from tunelab.eval.metrics import normalize
from tunelab.tasks.base import Encoded

WINDOW = 256  # tokens per perplexity window: short enough for any model's context
INSTRUCTION = "Answer in a few words."


@lru_cache(maxsize=None)
def _shipped(name: str) -> tuple[dict[str, Any], ...]:
    text = resources.files("tunelab.eval.probes").joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def probe_texts() -> list[str]:
    return [r["text"] for r in _shipped("general_text.jsonl")]


def replay_texts() -> list[str]:
    return [r["text"] for r in _shipped("replay_text.jsonl")]


def probe_questions() -> list[dict[str, Any]]:
    return list(_shipped("general_questions.jsonl"))


def text_windows(texts: list[str], tokenizer: Any, window: int = WINDOW) -> list[Encoded]:
    """Each passage (with EOS) cut into windows of at most `window` tokens, every token supervised."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        out += [Encoded(ids[i:i + window], ids[i:i + window]) for i in range(0, len(ids), window)]
    return out


def question_prompt(tokenizer: Any, question: str) -> list[int]:
    """The question as the model would be asked it: through its chat template when it has one."""
    text = f"{INSTRUCTION} {question}"
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(f"Question: {text}\nAnswer:", add_special_tokens=True)["input_ids"]


def answered(output: str, answers: list[str]) -> bool:
    """Any accepted answer appears as whole words in the output."""
    said = f" {normalize(output)} "
    return any(re.search(rf"(?<=\s){re.escape(normalize(a))}(?=\s)", said) for a in answers)


def measure(model: torch.nn.Module, tokenizer: Any, batch_size: int = 8, questions: bool = True) -> dict[str, Any]:
    """General-text perplexity and (when asked) general-question accuracy of a model, with its answers."""
    loss = heldout_loss(model, text_windows(probe_texts(), tokenizer), tokenizer.pad_token_id, batch_size)
    if not questions:
        return {"perplexity": loss["perplexity"], "accuracy": None, "questions": 0, "answers": []}
    questions = probe_questions()
    outputs = generate(model, tokenizer, [question_prompt(tokenizer, q["question"]) for q in questions],
                       max_new_tokens=12, batch_size=batch_size)
    right = [answered(o, q["answers"]) for o, q in zip(outputs, questions)]
    return {"perplexity": loss["perplexity"], "accuracy": sum(right) / len(right), "questions": len(right),
            "answers": outputs}


def compare(before: dict[str, Any], after: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The change in general ability; flagged when perplexity rises or accuracy falls beyond threshold."""
    ppl_change = after["perplexity"] / before["perplexity"] - 1
    acc_change = after["accuracy"] - before["accuracy"] if after["questions"] else None
    flagged = ppl_change > threshold or (acc_change is not None and -acc_change > threshold)
    remedies = ["mix general text into training: data.replay_fraction=0.2",
                "a lower learning rate (train.learning_rate)", "a lighter method (method=lora, smaller lora.r)"]
    return {"perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
            "perplexity_change": ppl_change, "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"], "accuracy_change": acc_change, "questions": after["questions"],
            "threshold": threshold, "flagged": flagged, "remedies": remedies if flagged else []}


def replay_examples(fraction: float, n_train: int, tokenizer: Any, max_length: int, seed: int) -> list[Encoded]:
    """General-text windows making up `fraction` of the training mix (cycled when the shipped text runs out)."""
    if fraction <= 0:
        return []
    pool = text_windows(replay_texts(), tokenizer, window=max_length)
    want = round(fraction * n_train / (1 - fraction))
    rng = random.Random(seed)
    picked: list[Encoded] = []
    while len(picked) < want:
        picked += rng.sample(pool, min(len(pool), want - len(picked)))
    return picked
