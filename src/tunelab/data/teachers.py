"""Teacher models for synthetic data: a local checkpoint, or any OpenAI-compatible endpoint.

A teacher answers chat conversations: `chat(conversations, max_new_tokens, temperature, seed)`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Protocol

from tunelab.errors import ModelError

Conversation = list[dict[str, str]]


class Teacher(Protocol):
    name: str

    def chat(self, conversations: list[Conversation], max_new_tokens: int, temperature: float,
             seed: int) -> list[str]: ...


class LocalTeacher:
    """A bundled alias or local checkpoint, generating in batches on this machine."""

    def __init__(self, model: str):
        from tunelab.models import resolve_model
        from tunelab.models.loading import LoadRules, ModelSpec, load_model, load_tokenizer

        path = resolve_model(model)
        self.name = model
        self.tokenizer = load_tokenizer(path, LoadRules())  # the one loader: local files, safetensors only
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"{model}: a teacher needs a chat template; this model has none")
        self.model = load_model(path, ModelSpec("causal_lm"), LoadRules())

    def chat(self, conversations: list[Conversation], max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
        import torch

        from tunelab.scoring.generate import generate

        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                   for c in conversations]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        torch.manual_seed(seed)
        return generate(self.model, self.tokenizer, ids, max_new_tokens, temperature=temperature)


class HttpTeacher:
    """POST /v1/chat/completions with the standard library; the key comes from an environment variable."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float = 120):
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.name = f"{model} @ {base}"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def chat(self, conversations: list[Conversation], max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
        return [self._one(c, max_new_tokens, temperature, seed + i) for i, c in enumerate(conversations)]

    def _one(self, conversation: Conversation, max_new_tokens: int, temperature: float, seed: int) -> str:
        body = {"model": self.model, "messages": conversation, "max_tokens": max_new_tokens,
                "temperature": temperature, "seed": seed}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            raise ModelError(f"{self.url}: HTTP {err.code}: {err.read()[:200].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
            raise ModelError(f"{self.url}: no usable answer ({err})") from None
        return _content(reply, self.url)


def _content(reply: Any, url: str) -> str:
    try:
        return str(reply["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError):
        raise ModelError(f"{url}: reply has no choices[0].message.content: {str(reply)[:200]}") from None


def make_teacher(teacher: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY") -> Teacher:
    """An endpoint when a base URL is given (the key is read from `api_key_env`, if set), else a local model."""
    if base_url:
        return HttpTeacher(base_url, teacher, os.environ.get(api_key_env))
    return LocalTeacher(teacher)
