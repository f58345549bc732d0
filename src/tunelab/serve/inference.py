"""Inference behind one small interface: `Engine.stream(target, request)` yields the answer's text as it is
generated, then its finish reason and token counts. Routes know nothing else.

Requests for a base model and for LoRA adapters tuned from it share one loaded base: they are batched together,
each row with its own adapter (`serve.batching`). A target that cannot join such a batch (a method whose
`shares_base` is false: full fine-tuning, DoRA, prompt learning, a quantized base...) is loaded on its own
through the method's loader (`export.source.load_tuned`) and generates one request at a time. Both kinds of
loaded model share one LRU of at most `max_loaded` entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.export.source import Source
from tunelab.serve.catalog import Target
from tunelab.serve.errors import ApiError
from tunelab.serve.requests import GenerationRequest, Piece, StopCut, sampling


@dataclass
class Loaded:
    tokenizer: Any
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine:
    def __init__(self, max_loaded: int = 4, max_adapters: int = 8, max_batch: int = 8, window_s: float = 0.02):
        self.max_loaded = max_loaded
        self.batching = {"max_adapters": max_adapters, "max_batch": max_batch, "window_s": window_s}
        self.loaded: OrderedDict[str, Any] = OrderedDict()  # Loaded or batching.SharedBase, least recent first
        self.loading = threading.Lock()
        self.routes: dict[str, Any] = {}  # target key -> its adapter (None: the base itself), or NOT_SHARED

    def stream(self, target: Target, request: GenerationRequest) -> Iterator[Piece]:
        adapter = self._route(target)
        if adapter is NOT_SHARED:
            entry = self._get(target.key, lambda: Loaded(*load(target)))
            ids = prompt_ids(entry.tokenizer, request)
            with entry.lock:
                yield from generate_stream(entry, ids, request)
            return
        shared = self._get(f"shared|{target.base}", lambda: self._shared(target.base))
        yield from shared.stream(adapter, prompt_ids(shared.tokenizer, request), request)

    def _shared(self, base: str) -> Any:
        from tunelab.serve.batching import SharedBase

        return SharedBase(*load(Target(base, base)), **self.batching)

    def _route(self, target: Target) -> Any:
        if target.key not in self.routes:
            self.routes[target.key] = shared_adapter(target)
        return self.routes[target.key]

    def _get(self, key: str, make: Any) -> Any:
        with self.loading:
            entry = self.loaded.get(key)
            if entry is None:
                entry = make()
                self.loaded[key] = entry
                while len(self.loaded) > self.max_loaded:
                    self.loaded.popitem(last=False)  # requests it is serving keep it until they end
            self.loaded.move_to_end(key)
            return entry


NOT_SHARED = object()


def shared_adapter(target: Target) -> Any:
    """How the target joins its base's shared batches: None (it is the base), its adapter, or NOT_SHARED when its
    method's saved model does not load onto the plain base (or the run loaded its base differently)."""
    from tunelab.methods import get_method
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec
    from tunelab.rundir import RunDir
    from tunelab.serve.batching import Adapter
    from tunelab.tasks import get_task

    if target.run_dir is None:
        return None
    config = run_config(target.run_dir)
    task = get_task(config.task)
    if not get_method(config.method).shares_base or task.model_kind != "causal_lm":
        return NOT_SHARED  # (a model of another kind is refused with its reason by `load`)
    if task.model_spec(config, None) != ModelSpec() or LoadRules.of(config) != LoadRules() \
            or resolve_model(config.model) != resolve_model(target.base):
        return NOT_SHARED
    return Adapter(target.weights if target.weights is not None else RunDir(target.run_dir).model_dir)


def load(target: Target) -> tuple[Any, Any]:
    """Tokenizer and model in eval mode: the base, the run's tuned model, or the run's model at a checkpoint."""
    from tunelab.export.source import load_tuned, open_run
    from tunelab.tasks import get_task

    if target.run_dir is None:
        from tunelab.models import resolve_model
        from tunelab.models.loading import LoadRules, ModelSpec, load_pair

        tokenizer, model = load_pair(resolve_model(target.base), ModelSpec(), LoadRules())
        return tokenizer, model.eval()
    config = run_config(target.run_dir)
    if get_task(config.task).model_kind != "causal_lm":
        raise ApiError(400, f"The model `{target.name}` was tuned as a {get_task(config.task).model_kind} (task "
                            f"{config.task}); completions need a causal language model", param="model",
                       code="unsupported_model")
    if target.weights is None:
        return load_tuned(open_run(target.run_dir))
    return load_tuned(AtCheckpoint(target.run_dir, config, {}, target.weights))


@dataclass
class AtCheckpoint(Source):
    """A run as an export source whose model files are a checkpoint's (the run may still be training)."""

    weights: Path

    @property
    def model_dir(self) -> Path:
        return self.weights


def run_config(run_dir: Path) -> Any:
    from tunelab.config import validate_config
    from tunelab.rundir import RunDir

    return validate_config(RunDir(run_dir).read_config())


def prompt_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    if request.messages is None:
        return tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "This model has no chat template; use /v1/completions with a prompt", param="messages",
                       code="unsupported_model")
    text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_stream(entry: Loaded, ids: list[int], request: GenerationRequest) -> Iterator[Piece]:
    """transformers' generate in a thread, its text streamed, cut at the first stop string. Stop strings are
    looked for in the answer only (transformers' own `stop_strings` also match across the prompt's end): once one
    shows, the generation stops at its next token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    tokenizer, model = entry.tokenizer, entry.model
    cancelled = threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            return cancelled.is_set()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    device = next(model.parameters()).device
    options = {"input_ids": torch.tensor([ids], device=device),
               "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
               "max_new_tokens": request.max_tokens, "streamer": streamer, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
               "stopping_criteria": StoppingCriteriaList([Cancelled()]), **sampling(request)}
    if request.seed is not None:
        torch.manual_seed(request.seed)
    out: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                out.append(model.generate(**options))
        except BaseException as err:  # handed to the request's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    cut = StopCut(request.stop)
    try:
        for text in streamer:
            shown = cut.feed(text)
            if shown:
                yield Piece(shown)
            if cut.hit:
                cancelled.set()
        thread.join()
        if errors:
            raise errors[0]
        rest = cut.flush()
        generated = out[0][0][len(ids):].tolist()
        ended = cut.hit or len(generated) < request.max_tokens or generated[-1] == tokenizer.eos_token_id
        yield Piece(rest, "stop" if ended else "length",
                    {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                     "total_tokens": len(ids) + len(generated)})
    finally:
        cancelled.set()  # a client that went away stops the generation at its next token
