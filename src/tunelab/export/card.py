"""The model card (README.md) of an exported artifact, written from the run directory alone."""

from __future__ import annotations

import json
from typing import Any

from tunelab.export.source import Source
from tunelab.rundir import RunDir

LOADING = {
    "adapter": """```python
from peft import AutoPeftModelForCausalLM  # AutoPeftModelForSequenceClassification for a classifier
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{out}")  # the base path is in adapter_config.json
tokenizer = AutoTokenizer.from_pretrained("{out}")
```
Or with tunelab: `tunelab chat {out}`, or several adapters on one base: `tunelab chat --adapter NAME={run_dir}`.""",
    "merged": """```python
from transformers import {auto}, AutoTokenizer

model = {auto}.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```
No tunelab and no PEFT needed.""",
    "gguf": """```sh
llama-cli -m {out}/{file} -cnv          # llama.cpp, chat template included
```
```python
from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers' own GGUF reader
model = AutoModelForCausalLM.from_pretrained("{out}", gguf_file="{file}")
tokenizer = AutoTokenizer.from_pretrained("{out}", gguf_file="{file}")
```""",
}


def _metrics_table(summary: dict[str, Any]) -> str:
    before, after = summary.get("before", {}), summary.get("after", {})
    rows = ["| metric | before | after |", "|---|---|---|"]
    rows += [f"| {k} | {_fmt(before.get(k))} | {_fmt(after.get(k))} |" for k in after if not k.endswith("_se")]
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _data_lines(source: Source) -> str:
    data = RunDir(source.run_dir).read_data_info()
    return "\n".join(f"- {split}: `{d.get('path')}`, {d.get('rows')} rows ({d.get('format')}), sha256 `{d.get('sha256')}`"
                     for split, d in data.items() if isinstance(d, dict))


def model_card(source: Source, kind: str, out_name: str, extra: dict[str, Any]) -> str:
    """Base model, data fingerprints, config, before/after metrics, forgetting and how to load the artifact."""
    from tunelab.models.loading import KINDS

    s, config = source.summary, source.config
    forgetting = s.get("forgetting")
    auto = KINDS[source.task.model_kind][0]
    config_yaml = RunDir(source.run_dir).read_config_text()
    how = LOADING[kind].format(out=out_name, run_dir=source.run_dir, auto=auto, file=extra.get("file", ""))
    return f"""# {config.name}: {config.method} fine-tune of {config.model} ({kind} export)

Exported by `tunelab export` from run `{source.run_dir}`. Task `{config.task}`, method `{config.method}`,
{s.get('trainable_params')} of {s.get('total_params')} parameters trained.

## Base model
`{config.model}`

## Data
{_data_lines(source)}

## Held-out metrics (before and after tuning)
{_metrics_table(s)}

## Forgetting
{json.dumps(forgetting, indent=2) if forgetting else "not measured in this run (eval.forgetting_probe=false or a task without an LM head)"}

## How to load it
{how}

## Verification
See `verification.json`: this artifact was reloaded and compared with the run's model on its held-out rows.

## Config
```yaml
{config_yaml.rstrip()}
```
"""
