"""Many adapters of one base model, and the base itself, served in shared batches.

A `SharedBase` holds one base model. LoRA adapters load into it (PEFT `load_adapter`) on first use, at most
`max_adapters` at a time (the least recently used is deleted first). Requests queue; one scheduler thread takes
those that arrive within `window_s` (up to `max_batch`, with the same sampling settings) and runs ONE `generate`
for them, each row with its own adapter through PEFT's mixed-adapter batches (`adapter_names`, `"__base__"` for
the base). A stopping criterion called at every decoding step hands each row's new text to its request as it is
decoded, and ends the row at its own `max_tokens`, stop string or end-of-sequence token.

Rows are left-padded with an attention mask (transformers derives the position ids from it), so a greedy answer
is the one the request would get alone.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.serve.requests import GenerationRequest, Piece, StopCut, sampling

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
_ids = itertools.count()


@dataclass(frozen=True)
class Adapter:
    """A saved LoRA adapter, named in the model by a hash of where it lives (PEFT names cannot hold dots)."""

    path: Path

    @property
    def name(self) -> str:
        return "a" + hashlib.sha1(str(self.path).encode()).hexdigest()[:16]


@dataclass(eq=False)  # a row is itself: two requests with the same fields are two rows
class Row:
    """One request in the queue: its prompt ids, its adapter (None: the base), and where its pieces go."""

    adapter: Adapter | None
    ids: list[int]
    request: GenerationRequest
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    serial: int = field(default_factory=lambda: next(_ids))

    @property
    def group(self) -> tuple[Any, ...]:
        """Rows batch together only with rows sampled the same way; a seeded row alone, so its seed gives the
        same answer whatever else is being served."""
        if self.request.temperature <= 0:
            return ("greedy",)
        if self.request.seed is not None:
            return ("seeded", self.serial)
        return ("sampled", self.request.temperature, self.request.top_p)


class SharedBase:
    def __init__(self, tokenizer: Any, model: Any, max_adapters: int = 8, max_batch: int = 8,
                 window_s: float = 0.02):
        if max_adapters < 1 or max_batch < 1:
            raise ValueError("max_adapters and max_batch must be at least 1")
        self.tokenizer, self.model = tokenizer, model
        self.max_adapters, self.max_batch, self.window_s = max_adapters, max_batch, window_s
        self.adapters: OrderedDict[str, Adapter] = OrderedDict()  # loaded, least recently used first
        self.pending: list[Row] = []
        self.wake = threading.Condition()
        self.working = False

    def stream(self, adapter: Adapter | None, ids: list[int], request: GenerationRequest) -> Iterator[Piece]:
        row = Row(adapter, ids, request)
        self._submit(row)
        try:
            while (item := row.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            row.cancelled.set()  # a client that went away ends its row at the next step

    def _submit(self, row: Row) -> None:
        with self.wake:
            self.pending.append(row)
            self.wake.notify()
            if not self.working:  # the scheduler runs while there is work and ends when the queue is empty
                self.working = True
                threading.Thread(target=self._work, daemon=True, name="tunelab-batch").start()

    def _work(self) -> None:
        while (rows := self._next_batch()) is not None:
            try:
                rows = self._ready(rows)
                if rows:
                    decode_batch(self.tokenizer, self.model, rows)
            except BaseException as err:  # the batch's requests get the error; the scheduler goes on
                for row in rows:
                    row.out.put(err)

    def _next_batch(self) -> list[Row] | None:
        """The rows of the next batch, once the window has passed or a full batch waits; None when idle."""
        with self.wake:
            if not self.pending:
                self.working = False
                return None
            deadline = time.monotonic() + self.window_s
            while len(self.pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self.wake.wait(left)
            taken = take(self.pending, self.max_batch, self.max_adapters)
            self.pending = [row for row in self.pending if row not in taken]
            return taken

    def _ready(self, rows: list[Row]) -> list[Row]:
        """Load the adapters the rows name (least recently used ones go to make room); a row whose adapter
        cannot load gets the error and leaves the batch."""
        needed = {row.adapter.name for row in rows if row.adapter is not None}
        ready = []
        for row in rows:
            if row.adapter is not None:
                try:
                    self._load(row.adapter, needed)
                except Exception as err:
                    row.out.put(err)
                    continue
            ready.append(row)
        return ready

    def _load(self, adapter: Adapter, keep: set[str]) -> None:
        from peft import PeftModel

        if adapter.name not in self.adapters:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=adapter.name)
            else:  # the first adapter wraps the base
                self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=adapter.name).eval()
            self.adapters[adapter.name] = adapter
        self.adapters.move_to_end(adapter.name)
        for name in [n for n in self.adapters if n not in keep][:max(0, len(self.adapters) - self.max_adapters)]:
            if name in self.model.active_adapters:  # PEFT warns when the active one goes; which is active does not
                self.model.set_adapter(adapter.name, inference_mode=True)  # matter: a batch names each row's
            self.model.delete_adapter(name)
            del self.adapters[name]


def take(pending: list[Row], max_batch: int, max_adapters: int) -> list[Row]:
    """The oldest row and those after it of its sampling group, in arrival order, up to max_batch rows naming at
    most max_adapters adapters between them."""
    group, taken, names = pending[0].group, [], set()
    for row in pending:
        name = row.adapter.name if row.adapter is not None else None
        if row.group != group or (name is not None and name not in names and len(names) >= max_adapters):
            continue
        taken.append(row)
        names |= {name} - {None}
        if len(taken) == max_batch:
            break
    return taken


def decode_batch(tokenizer: Any, model: Any, rows: list[Row]) -> None:
    """One `generate` for the rows, left-padded, each with its adapter; each row's pieces go to its queue."""
    import torch
    from peft import PeftModel
    from transformers import StoppingCriteriaList

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(row.ids) for row in rows)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad_id] * (width - len(row.ids)) + row.ids for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row.ids)) + [1] * len(row.ids) for row in rows], device=device)
    streams = RowStreams(tokenizer, rows, width)
    options = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": max(r.request.max_tokens for r in rows),
               "pad_token_id": pad_id, "eos_token_id": tokenizer.eos_token_id, "disable_compile": True,
               "stopping_criteria": StoppingCriteriaList([streams]), **sampling(rows[0].request)}
    if isinstance(model, PeftModel):
        options["adapter_names"] = [row.adapter.name if row.adapter is not None else BASE for row in rows]
    if rows[0].request.seed is not None:
        torch.manual_seed(rows[0].request.seed)
    with torch.no_grad():
        model.generate(**options)
    streams.end_all()


class RowStreams:
    """A transformers stopping criterion called after every decoding step: it hands each row's new text to its
    request and ends the row at its own max_tokens, a stop string (in the answer only) or end-of-sequence."""

    def __init__(self, tokenizer: Any, rows: list[Row], width: int):
        self.tokenizer, self.rows, self.width = tokenizer, rows, width
        self.cuts = [StopCut(row.request.stop) for row in rows]
        self.shown = [""] * len(rows)  # decoded text handed to the stop cut so far
        self.done = [False] * len(rows)
        self.new: list[list[int]] = [[] for _ in rows]  # each row's answer ids so far
        self.eos = [False] * len(rows)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        for i, row in enumerate(self.rows):
            if not self.done[i]:
                self.step(i, input_ids[i, self.width:].tolist())
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def step(self, i: int, new: list[int]) -> None:
        row, cut = self.rows[i], self.cuts[i]
        self.new[i], self.eos[i] = new, new[-1] == self.tokenizer.eos_token_id
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if text.startswith(self.shown[i]) and not text.endswith("\ufffd"):  # held: a character cut mid-bytes
            shown = cut.feed(text[len(self.shown[i]):])
            self.shown[i] = text
            if shown:
                row.out.put(Piece(shown))
        if self.eos[i] or cut.hit or len(new) >= row.request.max_tokens or row.cancelled.is_set():
            self.end(i, new)

    def end(self, i: int, new: list[int]) -> None:
        row, cut = self.rows[i], self.cuts[i]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        rest = "" if cut.hit else cut.feed(text[len(self.shown[i]):]) if text.startswith(self.shown[i]) else ""
        rest += cut.flush()
        stopped = self.eos[i] or cut.hit or len(new) < row.request.max_tokens
        usage = {"prompt_tokens": len(row.ids), "completion_tokens": len(new), "total_tokens": len(row.ids) + len(new)}
        row.out.put(Piece(rest, "stop" if stopped else "length", usage))
        row.out.put(None)
        self.done[i] = True

    def end_all(self) -> None:
        """Rows generate left unfinished (it stopped at the batch's max_new_tokens, or decoded nothing)."""
        for i in range(len(self.rows)):
            if not self.done[i]:
                self.end(i, self.new[i])
