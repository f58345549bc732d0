"""The catastrophic-forgetting probe (replay, its remedy, is `data.replay_fraction` in the LM tasks).

General ability is measured before and after a run on shipped data that is not the user's domain:
perplexity on general English text, and accuracy on general questions the bundled base model
answers correctly. Replay mixes other shipped general text into training (never the probe's text,
which would hide the loss it measures).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tunelab.data.general import probe_questions, probe_texts
from tunelab.scoring.generate import generate
from tunelab.scoring.metrics import normalize
from tunelab.tasks.lm import heldout_loss, text_windows

WINDOW = 256  # tokens per perplexity window: short enough for any model's context
INSTRUCTION = "Answer in a few words."


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


def measure(model: torch.nn.Module, tokenizer: Any, batch_size: int = 8, questions: bool = True,
            generation_batch: int = 64) -> dict[str, Any]:
    """General-text perplexity and (when asked) general-question accuracy of a model, with its answers."""
    loss = heldout_loss(model, text_windows(probe_texts(), tokenizer, WINDOW), tokenizer.pad_token_id, batch_size)
    if not questions:
        return {"perplexity": loss["perplexity"], "accuracy": None, "questions": 0, "answers": []}
    questions = probe_questions()
    outputs = generate(model, tokenizer, [question_prompt(tokenizer, q["question"]) for q in questions],
                       max_new_tokens=12, batch_size=generation_batch)
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
