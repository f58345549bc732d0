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


def render_pair(row: dict[str, Any], tokenizer: Any) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) as text: the chat template's rendering for chats (the prompt ending in the
    assistant's header), else the strings themselves; prompt + answer is the whole sequence."""
    pair = trl_row(row)
    if not conversational(pair):
        return pair["prompt"], pair["chosen"], pair["rejected"]
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    answers = [tokenizer.apply_chat_template(pair["prompt"] + pair[k], tokenize=False) for k in ("chosen", "rejected")]
    return prompt, *(a[len(prompt):] if a.startswith(prompt) else a for a in answers)


def trl_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)
