"""Supervised fine-tuning on prompt/completion rows and chat messages.

Loss is taken only on completions and assistant turns (and the EOS that ends them, so the tuned
model learns to stop); prompt, system, user and padding tokens carry the label IGNORE.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import DataError
from tunelab.tasks.base import FORGETTING, GENERATION, Baseline, Prepared, register_task
from tunelab.tasks.lm import IGNORE, Encoded, GenerationCase, LmTask, truncate


class Sft(LmTask):
    name = "sft"
    description = "Supervised fine-tuning on prompt/completion rows or chat messages (loss on answers only)."
    formats = ("prompt_completion", "messages")
    evidence = frozenset({GENERATION, FORGETTING})
    baseline_names = ("few_shot",)
    default_metrics = ("exact_match", "token_f1")

    def baselines(self, model: Any, tokenizer: Any, train: Any, held: Any, prepared: Prepared, config: Any,
                  events: Any) -> dict[str, Baseline]:
        from tunelab.tasks.few_shot import few_shot_baseline

        found = few_shot_baseline(self, model, tokenizer, train, held, prepared.held_out, config, events)
        return {"few_shot": found} if found is not None else {}

    def encode(self, row: dict[str, Any], fmt: str, tokenizer: Any, max_length: int) -> Encoded:
        if fmt == "prompt_completion":
            ids, labels = _encode_prompt_completion(row, tokenizer)
        else:
            ids, labels = _encode_messages(row["messages"], tokenizer)
        return truncate(ids, labels, max_length)

    def generation_case(self, row: dict[str, Any], fmt: str, tokenizer: Any) -> GenerationCase | None:
        if fmt == "prompt_completion":
            ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
            return GenerationCase(ids, row["completion"], row["prompt"])
        messages = _clean(row["messages"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = render(tokenizer, messages[:last], add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        user = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), prompt)
        return GenerationCase(ids, messages[last]["content"], user)


def _encode_prompt_completion(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int]]:
    prompt = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
    completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + completion, [IGNORE] * len(prompt) + completion


def _clean(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat messages need a model with a chat template; this model has none "
                        "(use prompt/completion rows instead)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode_messages(messages: list[dict[str, Any]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Render turn by turn so each assistant span is known exactly; label only those spans."""
    clean = _clean(messages)
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


register_task(Sft())
