"""Right-padded batches; labels are padded with IGNORE by length, never by token id.

(Padding labels by token id masks the EOS label when pad == eos, as with SmolLM2, and the tuned
model never learns to stop.)
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.tasks.base import IGNORE, Encoded


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


class Collator:
    """Trainer-facing collator over dataset rows holding input_ids and labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate([Encoded(list(r["input_ids"]), list(r["labels"])) for r in rows], self.pad_id)
