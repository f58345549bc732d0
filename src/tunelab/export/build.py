"""`export_run`: a finished run's tuned model as an adapter, a merged checkpoint or GGUF, written to a temp dir
beside OUT, reloaded and verified against the run's model, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ConfigError, TunelabError
from tunelab.events import Events, Listener
from tunelab.export import verify
from tunelab.export.card import model_card
from tunelab.export.gguf_file import QUANTS, check_exportable, rounded_like_file, write_gguf
from tunelab.export.source import Source, base_config, held_out_probes, load_tuned, open_run
from tunelab.rundir import directory_bytes, write_atomic, write_json

FORMATS = ("adapter", "merged", "gguf")
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


class VerificationFailed(TunelabError):
    """The exported artifact, reloaded, does not compute what the run's model computes within tolerance."""

    exit_code = 1


def export_run(run_dir: Path, fmt: str, out: Path, quants: tuple[str, ...] = ("f16",), rows: int = 16,
               on_event: Listener | None = None) -> dict[str, Any]:
    """Write, verify and publish one export; returns what verification.json holds. Progress goes out as events
    (`tunelab.events`), as a run's does."""
    events = Events(on_event)
    with events.active():
        return _export(Path(run_dir), fmt, Path(out), quants, rows, events)


def _export(run_dir: Path, fmt: str, out: Path, quants: tuple[str, ...], rows: int, events: Events) -> dict[str, Any]:
    source = open_run(run_dir)
    check_format(source, fmt, quants)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        events.emit("export_started", run_dir=str(source.run_dir), format=fmt)
        report = WRITERS[fmt](source, tmp, quants, rows, events)
        report.update(format=fmt, run_dir=str(source.run_dir), method=source.config.method,
                      model=source.config.model, bytes=directory_bytes(tmp))
        write_atomic(tmp / "README.md", model_card(source, fmt, str(out), report))
        write_json(tmp / "verification.json", report)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, check in report["checks"].items():
        events.emit("export_checked", check=name, passed=check.get("passed"), message=verify.describe_check(name, check))
    if not report["passed"]:
        raise VerificationFailed(f"{out}: the export does not match the run's model within tolerance "
                                 f"(see {out / 'verification.json'})")
    events.emit("export_finished", out=str(out), bytes=report["bytes"], passed=True,
                message=f"wrote {out} ({report['bytes'] / 2**20:.1f} MiB); verification passed")
    return report


def check_format(source: Source, fmt: str, quants: tuple[str, ...]) -> None:
    """Refuse, before anything loads, a format this run's method or model cannot produce."""
    method = source.method
    if fmt not in FORMATS:
        raise ConfigError(f'export format "{fmt}": expected one of {", ".join(FORMATS)}')
    if fmt == "adapter" and source.artifact_is_whole_model:
        raise ConfigError(f'method "{method.name}" saves the whole model, not an adapter; export --format merged')
    if fmt != "adapter" and not method.mergeable:
        raise ConfigError(f'method "{method.name}" cannot merge into the base weights; export --format adapter')
    if fmt == "gguf":
        if source.task.model_kind != "causal_lm":
            raise ConfigError(f'gguf holds causal language models; task "{source.task.name}" trains a '
                              f"{source.task.model_kind.replace('_', ' ')}: export --format merged")
        check_exportable(base_config(source))
        wrong = [q for q in quants if q not in QUANTS]
        if wrong or not quants:
            raise ConfigError(f'gguf quant "{",".join(wrong)}": expected one or more of {", ".join(QUANTS)}')


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: output exists and is not an empty directory; choose a new -o")


def _write_adapter(source: Source, tmp: Path, quants: tuple[str, ...], rows: int, events: Events) -> dict[str, Any]:
    """The method's own artifact as the run saved it (PEFT's format for PEFT methods) and the tokenizer."""
    for item in source.model_dir.iterdir():
        if item.is_file() and item.name != "README.md":  # PEFT's stub card is replaced by ours
            shutil.copy2(item, tmp / item.name)
    tokenizer, reference = load_tuned(source)
    probes = held_out_probes(source, tokenizer, rows)
    exported = _reload_adapter(source, tmp)
    check = verify.logit_check("adapter", reference, exported, probes)
    return {"checks": {"adapter": check}, "passed": check["passed"]}


def _reload_adapter(source: Source, directory: Path) -> torch.nn.Module:
    from tunelab.export.source import spec_of
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, load_model

    spec, rules = spec_of(source), LoadRules.of(source.config)
    base = load_model(resolve_model(source.config.model), spec, rules, **source.method.load_options(source.config, spec))
    return source.method.load(base, directory, spec, rules).eval()


def merged_model(source: Source) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and the tuned model merged into plain weights, on a full-precision base."""
    tokenizer, model = load_tuned(source, full_precision=True)
    return tokenizer, source.method.merge(model).eval()


def _write_merged(source: Source, tmp: Path, quants: tuple[str, ...], rows: int, events: Events) -> dict[str, Any]:
    import transformers

    from tunelab.models.loading import KINDS

    tokenizer, merged = merged_model(source)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    del merged
    _, reference = load_tuned(source, full_precision=True)
    probes = held_out_probes(source, tokenizer, rows)
    auto = getattr(transformers, KINDS[source.task.model_kind][0])
    exported = auto.from_pretrained(tmp, dtype=torch.float32).eval()  # plain transformers, as a user loads it
    checks = {"merged": verify.logit_check("merged", reference, exported, probes)}
    if "quantization_config" in source.method.load_options(source.config, source.task.model_spec(source.config, None)):
        # the run trained over a quantized base; the merge is onto full precision: measure what that costs
        _, run_model = load_tuned(source)
        checks["quantization_gap"] = verify.quantization_gap(run_model, exported, source.method.disabled, reference,
                                                             probes)
    return {"checks": checks, "passed": checks["merged"]["passed"]}


def _write_gguf(source: Source, tmp: Path, quants: tuple[str, ...], rows: int, events: Events) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, merged = merged_model(source)
    probes = held_out_probes(source, tokenizer, rows)
    max_new = min(source.config.eval.max_new_tokens, 32)
    checks, files = {}, {}
    for quant in quants:
        name = f"{source.config.name}-{quant}.gguf"
        events.emit("export_writing", file=name)
        write_gguf(merged, tokenizer, source.model_dir, tmp / name, quant)
        files[quant] = {"file": name, "bytes": (tmp / name).stat().st_size}
        reread = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32).eval()
        rounded = rounded_like_file(merged, quant)
        checks[quant] = verify.gguf_check(quant, merged, tokenizer, reread,
                                          AutoTokenizer.from_pretrained(tmp, gguf_file=name), probes, max_new, rounded)
        del reread, rounded
    return {"checks": checks, "files": files, "file": files[quants[0]]["file"],
            "passed": all(c["passed"] for c in checks.values())}


WRITERS = {"adapter": _write_adapter, "merged": _write_merged, "gguf": _write_gguf}
