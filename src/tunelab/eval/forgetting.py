"""The catastrophic-forgetting probe (replay, its remedy, is `data.replay_fraction` in the LM tasks).

General ability is measured before and after a run on shipped data that is not the user's domain:
perplexity on general English text, and accuracy on short general questions (351 ship; the first
`eval.forgetting_questions` are asked). No question is filtered by what some model knows: the run's own
base model answers them first, and its answers are the reference each tuned answer is paired with, so
accuracy can fall or rise. Each change has a 95% interval (perplexity: a paired bootstrap over the text's
windows; accuracy: McNemar's exact test on the questions the two answered differently), and each measure
its own threshold: forgetting is flagged when a change is beyond its threshold and beyond its noise.
Replay mixes other shipped general text into training (never the probe's text, which would hide the loss
it measures).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tunelab.data.general import probe_questions, probe_texts
from tunelab.eval.intervals import compare as compare_rows
from tunelab.scoring.generate import generate
from tunelab.scoring.metrics import normalize
from tunelab.scoring.rows import RowValues
from tunelab.tasks.lm import heldout_loss, loss_rows, text_windows

WINDOW = 256  # tokens per perplexity window: short enough for any model's context
INSTRUCTION = "Answer in a few words."
ANSWER_TOKENS = 12
REMEDIES = ["mix general text into training: data.replay_fraction=0.2", "a lower learning rate (train.learning_rate)",
            "a lighter method (method=lora, smaller lora.r)"]


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
    return any(re.search(rf"(?<=\s){re.escape(normalize(a))}(?=\s)", said) for a in answers if normalize(a))


def measure(model: torch.nn.Module, tokenizer: Any, batch_size: int = 8, questions: int = 200,
            generation_batch: int = 64) -> dict[str, Any]:
    """General-text perplexity and the first `questions` shipped questions' accuracy, each also row by row
    (the windows' losses, each question right or wrong), with the answers."""
    windows = text_windows(probe_texts(), tokenizer, WINDOW)
    loss = heldout_loss(model, windows, tokenizer.pad_token_id, batch_size, per_row=True)
    found = {"perplexity": loss["perplexity"], "accuracy": None, "questions": 0, "answers": [], "question_rows": None,
             "perplexity_rows": loss_rows(list(range(len(windows))), loss)["perplexity"]}
    asked = probe_questions()[:questions]
    if asked:
        outputs = generate(model, tokenizer, [question_prompt(tokenizer, q["question"]) for q in asked],
                           max_new_tokens=ANSWER_TOKENS, batch_size=generation_batch)
        right = [float(answered(o, q["answers"])) for o, q in zip(outputs, asked)]
        found.update(accuracy=sum(right) / len(right), questions=len(right), answers=outputs,
                     question_rows=RowValues.means(list(range(len(right))), right, outcomes=True))
    return found


def compare(before: dict[str, Any], after: dict[str, Any], perplexity_threshold: float,
            accuracy_threshold: float) -> dict[str, Any]:
    """The change in general ability with 95% intervals; flagged when perplexity rises or accuracy falls beyond
    its threshold and beyond its noise (the interval excludes no change)."""
    ppl = compare_rows("perplexity", before["perplexity_rows"], after["perplexity_rows"], relative=True)
    out: dict[str, Any] = {
        "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
        "perplexity_change": after["perplexity"] / before["perplexity"] - 1,
        "perplexity_interval": [ppl["low"], ppl["high"]] if ppl else None,
        "perplexity_windows": ppl["rows"] if ppl else 0,
        "perplexity_threshold": perplexity_threshold, "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"], "accuracy_change": None, "accuracy_interval": None,
        "accuracy_threshold": accuracy_threshold, "questions": after["questions"]}
    out["perplexity_flagged"] = beyond(out["perplexity_change"], perplexity_threshold, ppl)
    acc = compare_rows("accuracy", before["question_rows"], after["question_rows"]) \
        if before["question_rows"] is not None and after["question_rows"] is not None else None
    if acc is not None:
        out.update(accuracy_change=acc["difference"], accuracy_interval=[acc["low"], acc["high"]],
                   accuracy_p_value=acc["p_value"], forgotten=acc["lost"], learned=acc["gained"])
    out["accuracy_flagged"] = acc is not None and beyond(-acc["difference"], accuracy_threshold,
                                                         {**acc, "low": -acc["high"], "high": -acc["low"]})
    out["flagged"] = out["perplexity_flagged"] or out["accuracy_flagged"]
    out["remedies"] = REMEDIES if out["flagged"] else []
    return out


def beyond(worsening: float, threshold: float, interval: dict[str, Any] | None) -> bool:
    """A worsening past the threshold that its interval confirms (its lower end above 0); with no interval
    (too few rows to form one), past the threshold alone."""
    return worsening > threshold and (interval is None or interval["low"] > 0)
