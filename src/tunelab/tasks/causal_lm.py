"""Continued pretraining on raw text: loss on every token, EOS appended so documents end.

With `causal_lm.packing` a micro-batch's documents go end to end in one row with no padding: the LM
tasks' padding-free path (`speed.padding_free`: `tasks.lm.FlatCollator` and `LmTrainer`). Position ids
restart at each document, and with no attention mask and no cache transformers builds the
block-diagonal mask from them (sdpa, eager, flash), so no document attends to another; `check_packing`
proves that on the run's model before training.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.settings import Section, register_section
from tunelab.tasks.base import Prepared, register_task
from tunelab.tasks.lm import FlatCollator, LmTask


class CausalLmSettings(Section):
    packing: bool = Field(
        True, description="Put each micro-batch's documents end to end in one row (no padding, no attention across "
                          "documents; position ids restart per document): no compute spent on padding "
                          "(docs/tasks-lm.md).")


register_section("causal_lm", CausalLmSettings)


@torch.no_grad()
def check_packing(model: torch.nn.Module, rows: list[dict[str, Any]], tolerance: float = 1e-3) -> None:
    """Refuse packing on a model whose attention ignores document boundaries: a document's logits must
    not change when another document is packed before it."""
    first, second = (list(r["input_ids"])[:16] for r in rows[:2])
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0]
        batch = {k: v.to(device) for k, v in FlatCollator()([{"input_ids": first, "labels": first},
                                                              {"input_ids": second, "labels": second}]).items()
                 if k in ("input_ids", "position_ids")}  # no attention mask, as LmTrainer trains on it
        packed = model(**batch, use_cache=False).logits[0, len(first):]
    finally:
        model.train(was_training)
    gap = (alone.float() - packed.float()).abs().max().item()
    if gap > tolerance:
        raise ConfigError(f"causal_lm.packing: this model ({type(model).__name__}, attention "
                          f"{getattr(model.config, '_attn_implementation', '?')}) lets packed documents attend to "
                          f"each other (logits differ by {gap:.3g}); set causal_lm.packing=false")


class CausalLm(LmTask):
    name = "causal_lm"
    description = "Continued pretraining on raw text (loss on every token); metric: held-out perplexity."
    formats = ("text",)
    sections = (*LmTask.sections, "causal_lm")
    default_metrics = ("perplexity",)

    def prepare(self, config: Any, tokenizer: Any, train: Any, held: Any, events: Any) -> Prepared:
        """Packing is the LM tasks' padding-free path (FlatCollator, LmTrainer), switched on here."""
        prepared = super().prepare(config, tokenizer, train, held, events)
        prepared.info["packing"] = config.causal_lm.packing
        if config.causal_lm.packing:
            prepared.speed = prepared.speed.model_copy(update={"padding_free": True})
        return prepared

    def trainer(self, model: torch.nn.Module, tokenizer: Any, prepared: Prepared, args: dict[str, Any],
                callbacks: list[Any]) -> Any:
        """The LM trainer, after checking on this model that packed documents do not see each other."""
        if prepared.info.get("packing") and len(prepared.train) > 1:
            check_packing(model, prepared.train)
        return super().trainer(model, tokenizer, prepared, args, callbacks)


register_task(CausalLm())
