"""What a generation request asks for and what it streams back, shared by the one-at-a-time path
(`serve.inference`) and the batched one (`serve.batching`): the request, its pieces, its sampling options and
the stop-string cut."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationRequest:
    """What to generate: chat `messages` (through the chat template) or a raw `prompt`."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Piece:
    """Text generated since the last piece; the last piece also says why generation ended and the token counts."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


def sampling(request: GenerationRequest) -> dict[str, Any]:
    if request.temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p, "top_k": 0}


class StopCut:
    """Streamed text up to the first stop string: text that may be the start of one is held back until the next
    piece says whether it is."""

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.hit = [s for s in stops if s], "", False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        self.held += text
        at = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if at:
            self.hit = True
            shown, self.held = self.held[:min(at)], ""
            return shown
        keep = max((n for s in self.stops for n in range(len(s) - 1, 0, -1) if self.held.endswith(s[:n])), default=0)
        shown, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return shown

    def flush(self) -> str:
        shown, self.held = ("" if self.hit else self.held), ""
        return shown
