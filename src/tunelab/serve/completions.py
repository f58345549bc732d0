"""`/v1/chat/completions` and `/v1/completions`: requests checked into a `GenerationRequest`, answers shaped as
OpenAI's objects, whole or streamed as server-sent events (with a last usage chunk on
`stream_options.include_usage`)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

from tunelab.serve.errors import bad_request
from tunelab.serve.requests import GenerationRequest, Piece
from tunelab.serve.store import now

DEFAULT_MAX_TOKENS = 256
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SHARED = ("model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n", "user",
          "store", "metadata")
CHAT_ONLY = ("messages", "max_completion_tokens")
TEXT_ONLY = ("prompt",)


def chat_request(body: dict[str, Any]) -> GenerationRequest:
    _known(body, (*SHARED, *CHAT_ONLY))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list of {role, content}", "messages")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return GenerationRequest(messages=[_message(m, i) for i, m in enumerate(messages)],
                             **_options(body, limit, "max_completion_tokens"))


def text_request(body: dict[str, Any]) -> GenerationRequest:
    _known(body, (*SHARED, *TEXT_ONLY))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt: expected a string (one prompt per request)", "prompt")
    return GenerationRequest(prompt=prompt, **_options(body, body.get("max_tokens"), "max_tokens"))


def _known(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    if body.get("n", 1) != 1:
        raise bad_request("n: only 1 choice per request is supported", "n")


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise bad_request(f"{where}.role: expected one of {', '.join(ROLES)}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text reaches a text model
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise bad_request(f"{where}.content: only text parts are supported", f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content: expected a string", f"{where}.content")
    return {"role": ROLES[message["role"]], "content": content}


def _options(body: dict[str, Any], limit: Any, limit_name: str) -> dict[str, Any]:
    limit = DEFAULT_MAX_TOKENS if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise bad_request(f"{limit_name}: expected a positive integer, got {limit!r}", limit_name)
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    for name, value, low, high in (("temperature", temperature, 0, 2), ("top_p", top_p, 0, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise bad_request(f"{name}: expected a number from {low} to {high}, got {value!r}", name)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise bad_request("stop: expected a string or a list of up to 4 strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"seed: expected an integer, got {seed!r}", "seed")
    return {"max_tokens": limit, "temperature": float(temperature), "top_p": float(top_p), "stop": stop,
            "seed": seed}


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(isinstance(options, dict) and options.get("include_usage"))


def whole(pieces: Iterator[Piece], model: str, chat: bool) -> dict[str, Any]:
    text, last = "", None
    for piece in pieces:
        text += piece.text
        last = piece
    choice = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = text
    return {**_head(model, chat, False), "choices": [choice], "usage": last.usage}


def _head(model: str, chat: bool, chunk: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", "object": kind, "created": now(),
            "model": model, "system_fingerprint": None}


def events(pieces: Iterator[Piece], model: str, chat: bool, usage: bool) -> Iterator[str]:
    """Server-sent events: a chunk per piece of text, the finish reason, the usage chunk if asked, [DONE]."""
    head = _head(model, chat, True)
    if chat:
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
    last = None
    for piece in pieces:
        last = piece
        if piece.text:
            yield _sse({**head, "choices": [_delta(piece.text, None, chat)]})
    yield _sse({**head, "choices": [_delta("", last.finish_reason, chat)]})
    if usage:
        yield _sse({**head, "choices": [], "usage": last.usage})
    yield "data: [DONE]\n\n"


def _delta(text: str, finish: str | None, chat: bool) -> dict[str, Any]:
    if chat:
        return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish, "logprobs": None}
    return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}


def _sse(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value)}\n\n"
