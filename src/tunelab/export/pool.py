"""Models to talk to: a run, an export or any checkpoint, and several runs' adapters over one base model in
memory, switched per request. The chat CLI is a thin layer over this; a service can hold one `AdapterSet`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError, TunelabError
from tunelab.rundir import RunDir

BASE = "base"  # the adapter name that switches every adapter off


def load_target(target: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and causal LM for a run directory, an export directory (adapter, merged or GGUF), a bundled
    alias or a Hugging Face checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.export.source import load_tuned, open_run

    path = Path(target)
    if RunDir(path).has_config():
        source = open_run(path)
        kind = source.task.model_kind.replace("_", " ")
        if kind != "causal lm":
            kind = kind if kind.endswith("classifier") else f"{kind} model"
            raise ConfigError(f"{path}: this run is {'an' if kind[0] in 'aeiou' else 'a'} {kind} (task "
                              f"{source.task.name}), not a model that writes replies; chat talks to causal LM runs "
                              f"(score this one with `tunelab eval {path} --data FILE`)")
        return load_tuned(source)
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if ggufs:
        name = ggufs[0].name
        return (AutoTokenizer.from_pretrained(path, gguf_file=name),
                AutoModelForCausalLM.from_pretrained(path, gguf_file=name, dtype=torch.float32).eval())
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoTokenizer.from_pretrained(path), AutoPeftModelForCausalLM.from_pretrained(path).eval()
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair

    tokenizer, model = load_pair(resolve_model(target), ModelSpec(), LoadRules())
    return tokenizer, model.eval()


class AdapterSet:
    """Several runs' LoRA-family adapters over one full-precision base, loaded once; `use(name)` switches."""

    def __init__(self, runs: dict[str, Path]):
        from peft import PeftModel

        from tunelab.models import resolve_model
        from tunelab.models.loading import LoadRules, ModelSpec, load_pair

        if not runs:
            raise ConfigError("adapters: give at least one NAME=RUN_DIR")
        sources = {name: _adapter_run(name, Path(d)) for name, d in runs.items()}
        models = {s.config.model for s in sources.values()}
        if len(models) > 1:
            raise ConfigError(f"adapters: the runs tune different base models ({', '.join(sorted(models))}); "
                              "adapters share one base")
        first = next(iter(sources.values()))
        self.tokenizer, base = load_pair(resolve_model(first.config.model), ModelSpec(),
                                          LoadRules.of(first.config))
        self.names = list(sources)
        model = None
        for name, source in sources.items():
            if model is None:
                model = PeftModel.from_pretrained(base, source.model_dir, adapter_name=name)
            else:
                model.load_adapter(source.model_dir, adapter_name=name)
        self.model = model.eval()
        self.active = self.names[0]
        self._lock = threading.Lock()

    def use(self, name: str) -> None:
        """Make `name` the adapter requests without one go through (`base`: every adapter off)."""
        self.active = self._known(name)

    def _known(self, name: str) -> str:
        if name != BASE and name not in self.names:
            raise ConfigError(f'adapter "{name}": expected one of {", ".join([*self.names, BASE])}')
        return name

    def generate(self, messages: list[dict[str, str]], adapter: str | None = None, **options: Any) -> Iterator[str]:
        """Stream the reply through the named adapter (the active one when None); one request at a time, since
        the active adapter is model state."""
        name = self._known(adapter or self.active)
        with self._lock:
            if name == BASE:
                with self.model.disable_adapter():
                    yield from stream_reply(self.model, self.tokenizer, messages, **options)
            else:
                self.model.set_adapter(name)
                yield from stream_reply(self.model, self.tokenizer, messages, **options)


def _adapter_run(name: str, run_dir: Path) -> Any:
    from tunelab.export.source import open_run

    source = open_run(run_dir)
    if not (source.model_dir / "adapter_config.json").is_file():
        raise ConfigError(f'adapter "{name}": {run_dir} holds no PEFT adapter (method "{source.config.method}"); '
                          "only LoRA-family runs share a base")
    if source.task.model_kind != "causal_lm":
        raise ConfigError(f'adapter "{name}": {run_dir} trains a {source.task.model_kind}; chat needs a causal LM')
    return source


def stream_reply(model: torch.nn.Module, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 256,
                 temperature: float = 0.0) -> Iterator[str]:
    """The model's reply to the conversation through its chat template, text pieces as they are generated."""
    from transformers import TextIteratorStreamer

    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError("this model's tokenizer has no chat template; chat needs one")
    device = next(model.parameters()).device
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    kwargs = {"input_ids": ids["input_ids"].to(device), "attention_mask": ids["attention_mask"].to(device),
              "max_new_tokens": max_new_tokens, "streamer": streamer, "pad_token_id": tokenizer.pad_token_id,
              **sampling}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def parse_adapters(items: list[str]) -> dict[str, Path]:
    """NAME=RUN_DIR pairs from the command line."""
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f'--adapter "{item}": expected NAME=RUN_DIR')
        if name == BASE or name in runs:
            raise ConfigError(f'--adapter "{item}": the name "{name}" is {"reserved" if name == BASE else "taken"}')
        runs[name] = Path(path)
    return runs
