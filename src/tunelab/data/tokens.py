"""Rows as token ids with labels: a label is the token's id where loss is taken, IGNORE elsewhere.

Answers (a completion, an assistant turn) are learned with the EOS that ends them, so the tuned model
learns to stop; prompt, system and user tokens carry IGNORE. Chat rows are rendered with the model's
chat template turn by turn, so each assistant span is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.errors import DataError

IGNORE = -100


@dataclass
class Prompt:
    """A held-out prompt as token ids (as the model saw them in training), its reference answer, and
    the prompt's text to show beside the answers."""

    ids: list[int]
    reference: str
    text: str


def encode_text(text: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Every token learned, EOS appended so a document ends."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    return ids, list(ids)


def encode_prompt_completion(prompt: str, completion: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """The completion and an EOS learned; the prompt not."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Only role and content reach the chat template (a message's weight and name do not)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat messages need a model with a chat template; this model has none "
                        "(use prompt/completion rows instead)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_chat(messages: list[dict[str, Any]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Render turn by turn so each assistant span is known exactly; label only those spans (weight 1)."""
    clean = clean_messages(messages)
    full = render(tokenizer, clean)
    ids: list[int] = []
    labels: list[int] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, clean[:i], add_generation_prompt=True)
        after = render(tokenizer, clean[: i + 1])
        if not (after.startswith(before) and full.startswith(after) and before.startswith(full[:done])):
            raise DataError("the model's chat template does not render turns as a stable prefix; "
                            "use prompt/completion rows for this model")
        _extend(ids, labels, tokenizer, full[done:len(before)], learn=False)
        answer, tail = _split_after_eos(after[len(before):], tokenizer.eos_token)
        learn = bool(message.get("weight", 1))
        _extend(ids, labels, tokenizer, answer, learn=learn)
        if tail is None:  # the template does not end the turn with EOS: add it so generation stops
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id if learn else IGNORE)
            tail = ""
        _extend(ids, labels, tokenizer, tail, learn=False)
        done = len(after)
    _extend(ids, labels, tokenizer, full[done:], learn=False)
    return ids, labels


def chat_prompt(messages: list[dict[str, Any]], tokenizer: Any) -> Prompt:
    """The conversation up to its last assistant turn, rendered as training saw it, with that turn as reference."""
    clean = clean_messages(messages)
    last = max(i for i, m in enumerate(clean) if m["role"] == "assistant")
    prompt = render(tokenizer, clean[:last], add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    user = next((m["content"] for m in reversed(clean[:last]) if m["role"] == "user"), prompt)
    return Prompt(ids, clean[last]["content"], user)


def _split_after_eos(span: str, eos: str) -> tuple[str, str | None]:
    at = span.find(eos) if eos else -1
    if at < 0:
        return span, None
    end = at + len(eos)
    return span[:end], span[end:]


def _extend(ids: list[int], labels: list[int], tokenizer: Any, text: str, learn: bool) -> None:
    if not text:
        return
    piece = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids.extend(piece)
    labels.extend(piece if learn else [IGNORE] * len(piece))
