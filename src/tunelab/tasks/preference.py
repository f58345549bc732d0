"""What the TRL-trained tasks (reward, dpo, rlhf) share: rows as TRL reads them, TRL configs built from
the arguments tunelab sets for every run, and preference pairs rendered the way TRL renders them.

Not a task itself: it registers nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.tasks.base import Prepared

PAIR = ("prompt", "chosen", "rejected")


@dataclass
class TrlPrepared(Prepared):
    """Prepared rows plus the task's own TRL config fields (beta, max_length, ...), read by `trainer`."""

    options: dict[str, Any] = field(default_factory=dict)


def trl_config(config_class: type, args: dict[str, Any], **task_fields: Any) -> Any:
    """A TRL config from tunelab's trainer arguments. TRL turns gradient checkpointing on and bf16 on (even on
    CPU) unless told otherwise: tunelab's arguments always name both (`activation_checkpointing`, `bf16`)."""
    return config_class(**args, **task_fields)


def conversational(row: dict[str, Any]) -> bool:
    return any(isinstance(row.get(key), list) for key in PAIR)


def as_messages(value: str | list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return [{"role": role, "content": value}] if value else []


def trl_row(row: dict[str, Any]) -> dict[str, Any]:
    """The pair as TRL reads it: all strings, or (when any part is a chat) all message lists."""
    if not conversational(row):
        return {key: row[key] for key in PAIR}
    return {"prompt": as_messages(row["prompt"], "user"), "chosen": as_messages(row["chosen"], "assistant"),
            "rejected": as_messages(row["rejected"], "assistant")}


def answer_ids(prompt: str | list[dict[str, Any]], answer: str | list[dict[str, Any]],
               tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + answer ids) as TRL 1.16's DPO and reward trainers tokenize one side of a pair (in
    `trl_row` form): a chat through the chat template, whose end of turn ends the answer; a string with EOS
    appended where the answer lacks it. TRL adds EOS to non-conversational rows only: adding it to a chat
    answer too would supervise a second end of turn."""
    if isinstance(prompt, list) or isinstance(answer, list):
        def ids(messages: list[dict[str, Any]], **options: Any) -> list[int]:
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"])

        return ids(prompt, add_generation_prompt=True), ids(prompt + answer)
    eos = tokenizer.eos_token or ""
    ended = answer if answer.endswith(eos) else answer + eos
    return tokenizer(prompt)["input_ids"], tokenizer(prompt + ended)["input_ids"]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share (where TRL starts a completion: a template may render the
    prompt alone differently from the prompt inside the whole chat)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def render_pair(row: dict[str, Any], tokenizer: Any) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) as text, for reports: the chat template's rendering for chats (the prompt
    ending in the assistant's header), else the strings themselves."""
    pair = trl_row(row)
    if not conversational(pair):
        return pair["prompt"], pair["chosen"], pair["rejected"]
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    answers = [tokenizer.apply_chat_template(pair["prompt"] + pair[k], tokenize=False) for k in ("chosen", "rejected")]
    return prompt, *(a[len(prompt):] if a.startswith(prompt) else a for a in answers)


def trl_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)
