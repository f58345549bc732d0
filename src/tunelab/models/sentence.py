"""A loaded transformer as a sentence-transformers input module, so that a SentenceTransformer (and its
trainer and losses) runs on the model tunelab's loader built and a method made trainable: no second load,
no weights copied."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule


class LoadedEncoder(InputModule):
    """Token embeddings (`last_hidden_state`) of an already loaded model, a PEFT-wrapped one included."""

    save_in_root = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_seq_length: int):
        super().__init__()
        self.model, self.tokenizer, self.max_seq_length = model, tokenizer, max_seq_length

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [prompt + t for t in inputs] if prompt else list(inputs)
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                              return_tensors="pt")

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        features["token_embeddings"] = out.last_hidden_state
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """What the method trained (a PEFT adapter, or the whole model) and the tokenizer, in safetensors."""
        self.model.save_pretrained(output_path, safe_serialization=True)
        self.tokenizer.save_pretrained(output_path)
