"""Which texts of a corpus are most like a query: sentence embeddings from an encoder (the bundled MiniLM by
default), or a lexical ranking (scikit-learn TF-IDF) where no embedder is available.

The retrieval few-shot baseline (`tasks.few_shot`) ranks the training rows for each held-out prompt with
`nearest`; the contrastive task scores its encoder with `embed`, the same mean-pooled sentence embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunelab.errors import ModelError
from tunelab.events import batch_starts

TFIDF = "tfidf"
EMBED_MAX_LENGTH = 256  # MiniLM was trained on texts of up to 256 word pieces


@torch.no_grad()
def embed(model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> torch.Tensor:
    """Unit-length mean-pooled last hidden states, the sentence embedding the wrapped model trains."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in batch_starts("embedding texts", len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
    finally:
        model.train(was_training)
    return torch.cat(out).float().cpu()


def nearest(queries: list[str], corpus: list[str], k: int, ranker: str, batch_size: int = 32,
            events: Any = None) -> tuple[list[list[int]], str]:
    """For each query the indices of its k most similar corpus texts, most similar first (ties: the earlier
    text), and the ranking used: `ranker` is an encoder (a bundled alias or a local directory) or "tfidf". An
    encoder that cannot be loaded here (its package not installed) gives way to TF-IDF, with a warning."""
    if ranker != TFIDF:
        try:
            similarity = embedding_similarity(queries, corpus, ranker, batch_size)
            return top_k(similarity, k), f"{ranker} embeddings"
        except ModelError as err:
            if events is not None:
                events.emit("warning", message=f"eval.retrieval_ranker: {err}; ranking by TF-IDF instead")
    return top_k(tfidf_similarity(queries, corpus), k), "TF-IDF"


def top_k(similarity: np.ndarray, k: int) -> list[list[int]]:
    order = np.argsort(-similarity, axis=1, kind="stable")  # stable: equal scores keep the corpus order
    return order[:, :k].tolist()


def embedding_similarity(queries: list[str], corpus: list[str], encoder: str, batch_size: int) -> np.ndarray:
    """Cosine similarity of each query to each corpus text, embedded by `encoder`, loaded as the run loads
    models (offline, no pickles, no remote code)."""
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair

    tokenizer, model = load_pair(resolve_model(encoder), ModelSpec("embedding"), LoadRules())
    found = embed(model, tokenizer, queries + corpus, EMBED_MAX_LENGTH, batch_size).numpy()
    return found[:len(queries)] @ found[len(queries):].T  # in numpy: outside any autocast of the caller


def tfidf_similarity(queries: list[str], corpus: list[str]) -> np.ndarray:
    """Cosine similarity of TF-IDF vectors (words and word pairs), the vocabulary and weights from the corpus."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    try:
        texts = vectorizer.fit_transform(corpus)
    except ValueError:  # no word in the whole corpus (punctuation only): nothing ranks above anything
        return np.zeros((len(queries), len(corpus)))
    return (vectorizer.transform(queries) @ texts.T).toarray()
