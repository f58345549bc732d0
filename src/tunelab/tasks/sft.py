"""Supervised fine-tuning on prompt/completion rows and chat messages.

Loss is taken only on completions and assistant turns (and the EOS that ends them, so the tuned
model learns to stop); prompt, system, user and padding tokens carry the label IGNORE. The formats
build those labels (`data.tokens`).
"""

from __future__ import annotations

from typing import Any

from tunelab.tasks.base import FORGETTING, GENERATION, Baseline, Prepared, register_task
from tunelab.tasks.lm import LmTask


class Sft(LmTask):
    name = "sft"
    description = "Supervised fine-tuning on prompt/completion rows or chat messages (loss on answers only)."
    formats = ("prompt_completion", "messages")
    evidence = frozenset({GENERATION, FORGETTING})
    baseline_names = ("few_shot", "retrieval")
    default_metrics = ("exact_match", "token_f1")

    def baselines(self, model: Any, tokenizer: Any, train: Any, held: Any, prepared: Prepared, config: Any,
                  events: Any) -> dict[str, Baseline]:
        from tunelab.tasks.few_shot import few_shot_baselines

        return few_shot_baselines(self, model, tokenizer, train, held, prepared.held_out, config, events)


register_task(Sft())
