"""LoRA SFT speed against TRL's SFTTrainer + PEFT, batched evaluation against a one-prompt loop, and
memory of reading a large data file.

Training: tunelab and plain TRL, each in its own process, alternating, on the same model (bundled
SmolLM2), rows (examples/quickstart, tokenized once by tunelab's chat encoder so both train on the
same ids and the same supervised tokens), LoRA r16/alpha 32 on all linear layers, max_length 256,
batch 8, learning rate 1e-3, linear schedule without warmup, seed 42 (so the same batches in the same
order). Steps before --warmup are excluded from the speed; the mean training loss covers every step.
TRL runs with its defaults (bf16 autocast and gradient checkpointing on: `trl-defaults`) and in plain
fp32 (`trl-fp32`); the ratio is taken against the faster of the two.

On a CUDA machine the same script trains on the GPU (tunelab in bf16 by default, TRL with and without
its defaults), adds `tunelab-qlora`, and prints each variant's peak GPU memory and MFU (PaLM's model
FLOPs against the GPU's dense bf16 peak, `tunelab.train.flops`); its last line adds `mfu=` and
`qlora_peak_gpu_ratio_vs_lora=` (the goal: at most 0.40).

    python benchmarks/bench_train_vs_trl.py                       # 2 rounds, 16 steps, eval on 60 prompts
    python benchmarks/bench_train_vs_trl.py --steps 30 --rounds 3 --ablation
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
COMMON = ["train.warmup_ratio=0", "train.logging_steps=1", "train.save_steps=0", "train.eval_steps=0",
          "eval.train_sample=0", "data.leakage_check=false"]
# tunelab with every switch off (the "before" of the ablation) and each switch alone.
ALL_OFF = ["speed.supervised_head=false", "speed.shared_prefix=false", "speed.padding_free=false",
           "speed.group_by_length=false", "lora.dropout=0.05"]
ABLATION = {
    "tunelab-all-off": ALL_OFF,
    "only-supervised-head": ALL_OFF + ["speed.supervised_head=true"],
    "head+shared-prefix": ALL_OFF + ["speed.supervised_head=true", "speed.shared_prefix=true"],  # needs the head path
    "defaults-but-shared-prefix": ["speed.shared_prefix=false"],
    "defaults+compile": ["speed.compile=true"],  # its compile time falls in the warm-up steps
    "only-padding-free": ALL_OFF + ["speed.padding_free=true"],
    "only-dropout-0": ALL_OFF + ["lora.dropout=0"],
    "only-group-by-length": ALL_OFF + ["speed.group_by_length=true"],
    # padding-free batches are one row: nothing to share, so the shared prefix is off there
    "all-on": ["speed.supervised_head=true", "speed.shared_prefix=true", "speed.group_by_length=true", "lora.dropout=0"],
    "all-on-padding-free": ["speed.supervised_head=true", "speed.padding_free=true", "speed.group_by_length=true",
                            "lora.dropout=0"],
}


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timing_callback(record: dict):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["marks"].append((time.perf_counter(), int(state.num_input_tokens_seen), record["supervised"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record["losses"].append(float(logs["loss"]))

    return Timer()


def counting(collator, record: dict):
    """Counts the supervised targets (shifted labels) of every batch the collator builds."""
    def collate(rows):
        batch = collator(rows)
        record["supervised"] += int((batch["labels"][:, 1:] != -100).sum())
        return batch
    return collate


def child_tunelab(opts, record: dict) -> None:
    from tunelab.config import load_config
    from tunelab.events import Events
    from tunelab.methods import get_method
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, load_pair
    from tunelab.tasks import get_task
    from tunelab.inputs import load_data, resolve
    from tunelab.train.trainer import common_args

    cfg = load_config(QUICKSTART, [f"train.max_steps={opts.steps}", f"model={opts.model}", *COMMON, *opts.overrides])
    data = load_data(cfg)
    cfg, train, held = resolve(cfg, data), data.all_train, data.held
    task, method = get_task(cfg.task), get_method(cfg.method)
    spec = task.model_spec(cfg, train)
    tokenizer, model = load_pair(resolve_model(cfg.model), spec, LoadRules.of(cfg), **method.load_options(cfg, spec))
    prepared = task.prepare(cfg, tokenizer, train, held, Events())
    model = method.apply(model, cfg, spec)
    args = common_args(cfg, Path(opts.tmp) / "tunelab")
    trainer = task.trainer(model, tokenizer, prepared, args, [timing_callback(record)])
    trainer.data_collator = counting(trainer.data_collator, record)
    record["precision"] = "bf16" if args["bf16"] else "fp32"
    trainer.train()
    record["flops_per_token"] = model_flops(model, trainer, record["precision"])


def model_flops(model, trainer, precision: str) -> dict:
    """Model FLOPs per token (PaLM's count) and, on a GPU in the table, its peak: what MFU needs."""
    import torch

    from tunelab.train.flops import flops_per_token, peak_flops

    sequences = trainer.state.global_step * trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
    per_token = flops_per_token(model, trainer.state.num_input_tokens_seen / max(sequences, 1))
    peak = peak_flops(torch.cuda.get_device_name(), precision) if torch.cuda.is_available() else None
    return {"per_token": per_token, "peak": peak}


def child_trl(opts, record: dict) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import resolve_model

    path = resolve_model(opts.model)
    rows = json.loads(Path(opts.rows).read_text())
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path)
    fp32 = {"bf16": False, "gradient_checkpointing": False} if opts.variant == "trl-fp32" else {}
    import torch

    config = SFTConfig(output_dir=str(Path(opts.tmp) / "trl"), use_cpu=not torch.cuda.is_available(),
                       per_device_train_batch_size=8,
                       learning_rate=1e-3, max_steps=opts.steps, max_length=256, logging_steps=1, save_strategy="no",
                       report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                       completion_only_loss=True, **fp32)  # what TRL does for prompt/completion rows
    peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft, callbacks=[timing_callback(record)])
    trainer.data_collator = counting(trainer.data_collator, record)
    record["precision"] = "bf16" if config.bf16 else "fp32"
    trainer.train()


def child_eval(opts, record: dict) -> None:
    """Batched generation (tunelab's) against plain `generate`, one prompt at a time, on held-out prompts."""
    import torch

    from tunelab.config import load_config
    from tunelab.events import Events
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair
    from tunelab.precision import autocast, resolve
    from tunelab.scoring.generate import generate
    from tunelab.tasks import get_task
    from tunelab.inputs import load_data, resolve

    cfg = load_config(QUICKSTART, [f"model={opts.model}", *COMMON, *opts.overrides])
    data = load_data(cfg)
    cfg, train, held = resolve(cfg, data), data.all_train, data.held
    tokenizer, model = load_pair(resolve_model(cfg.model), ModelSpec("causal_lm"), LoadRules.of(cfg))
    cases = get_task(cfg.task).held_out(cfg, tokenizer, held, Events()).cases[: opts.eval_examples]
    prompts, new = [c.prompt_ids for c in cases], cfg.eval.max_new_tokens

    @torch.no_grad()
    def one(prompt: list[int], max_new_tokens: int) -> str:  # what a user writes by hand
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()

    with autocast(cfg.train.precision):  # both ways in the precision a run scores in (auto: bf16 where native)
        generate(model, tokenizer, prompts[:2], 2, batch_size=cfg.eval.generation_batch)  # warm-up, both ways
        one(prompts[0], 2)
        started = time.perf_counter()
        batched = generate(model, tokenizer, prompts, new, batch_size=cfg.eval.generation_batch)
        record["batched_s"] = time.perf_counter() - started
        started = time.perf_counter()
        looped = [one(p, new) for p in prompts]
        record["loop_s"] = time.perf_counter() - started
    record.update(examples=len(prompts), identical=sum(a == b for a, b in zip(batched, looped)),
                  precision=resolve(cfg.train.precision))


def child_data(opts, record: dict) -> None:
    """Peak memory of reading and validating a large JSONL (the reader `tunelab run` loads its data with)."""
    from tunelab.data.loading import validate_file

    before = rss_bytes()
    started = time.perf_counter()
    result = validate_file(Path(opts.rows))
    record.update(seconds=time.perf_counter() - started, rows=len(result.rows) if hasattr(result, "rows") else None,
                  rss_before=before)


def run_child(variant: str, opts, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(opts.steps), "--rows", opts.rows_file,
           "--tmp", opts.tmp, "--eval-examples", str(opts.eval_examples), "--model", opts.model,
           *[f"--set={o}" for o in extra]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def speed(record: dict, warmup: int) -> dict:
    """Tokens/s over the steps after warm-up; the loss over every step."""
    marks = record["marks"]
    (t0, tok0, sup0), (t1, tok1, sup1) = marks[warmup - 1], marks[-1]
    flops = record.get("flops_per_token") or {}
    tokens_per_s = (tok1 - tok0) / (t1 - t0)
    return {"tokens_per_s": tokens_per_s, "supervised_per_s": (sup1 - sup0) / (t1 - t0),
            "supervised": sup1 - sup0, "loss": statistics.mean(record["losses"]), "rss": record["peak_rss"],
            "gpu": record.get("peak_gpu", 0), "precision": record.get("precision"),
            "mfu": flops["per_token"] * tokens_per_s / flops["peak"] if flops.get("peak") else 0.0}


def quickstart_rows(path: Path) -> None:
    """The quickstart's rows as tunelab encodes them, for TRL: input_ids and the mask of supervised tokens."""
    from transformers import AutoTokenizer

    from tunelab.config import load_config
    from tunelab.models import resolve_model
    from tunelab.tasks import get_task
    from tunelab.inputs import load_data, resolve

    cfg = load_config(QUICKSTART, COMMON)
    data = load_data(cfg)
    cfg, train = resolve(cfg, data), data.all_train
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    task = get_task(cfg.task)
    encoded = [task.encode(row, train.format, tokenizer, cfg.train.max_length) for row in train.rows]
    rows = [{"input_ids": e.input_ids, "completion_mask": [int(x != -100) for x in e.labels]} for e in encoded]
    path.write_text(json.dumps(rows))


def cpu_line() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    shown = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    import os

    return f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(shown) or '-'}"


def train_rounds(opts, variants: dict[str, list[str]]) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(opts.rounds):
        for name, extra in variants.items():
            if round_ and name in ABLATION:  # the ablation runs once: its ratios are read against round 1
                continue
            result = speed(run_child(name, opts, extra), opts.warmup)
            results[name].append(result)
            print(f"round {round_ + 1} {name:22s} {result['tokens_per_s']:7.1f} tok/s  {result['supervised_per_s']:6.1f} "
                  f"sup/s  loss {result['loss']:.4f}  rss {result['rss'] / 2**20:6.0f} MiB  {result['precision']}",
                  flush=True)
    return results


def summary(runs: list[dict]) -> dict:
    keys = ("tokens_per_s", "supervised_per_s", "loss", "rss", "gpu", "mfu")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"supervised": runs[0]["supervised"]}


def data_memory(opts) -> None:
    """Reading a generated JSONL of --data-mb MB: peak RSS growth per MB of file."""
    source = [json.loads(line) for line in (ROOT / "examples/quickstart/train.jsonl").read_text().splitlines()]
    big = Path(opts.tmp) / "big.jsonl"
    with big.open("w") as out:
        i = 0
        while out.tell() < opts.data_mb * 2**20:
            row = source[i % len(source)]
            out.write(json.dumps({"messages": [dict(m, content=m["content"] + f" #{i}") for m in row["messages"]]}) + "\n")
            i += 1
    size_mb = big.stat().st_size / 2**20
    opts_rows = opts.rows_file
    opts.rows_file = str(big)
    record = run_child("data", opts, [])
    opts.rows_file = opts_rows
    grew = (record["peak_rss"] - record["rss_before"]) / 2**20
    print(f"run's data reader on {size_mb:.0f} MB ({i} rows): {record['seconds']:.1f} s, peak RSS "
          f"{record['peak_rss'] / 2**20:.0f} MiB ({grew:.0f} MiB above start: {grew / size_mb:.2f} MiB per MB)")


def parent(opts) -> None:
    print(cpu_line(), flush=True)
    opts.tmp = tempfile.mkdtemp(prefix="bench-trl-")
    opts.rows_file = str(Path(opts.tmp) / "rows.json")
    quickstart_rows(Path(opts.rows_file))
    from tunelab.precision import cpu_has_bf16

    import torch

    cuda = torch.cuda.is_available()
    # tunelab's default is train.precision=auto (bf16 where native); tunelab-fp32 is the same run in fp32
    variants = {"trl-defaults": [], "trl-fp32": [], "tunelab": [], "tunelab-fp32": ["train.precision=fp32"]} \
        | ({"tunelab-qlora": ["method=qlora"]} if cuda else {})
    if not (cuda or cpu_has_bf16() or opts.trl_bf16):
        del variants["trl-defaults"]
        print("trl-defaults (bf16 autocast, gradient checkpointing) left out: this CPU has no native bf16, and "
              "emulated bf16 ran one 16-step run for over 27 CPU-minutes here (fp32: about 2); --trl-bf16 runs it")
    if opts.ablation:
        variants |= {name: extra for name, extra in ABLATION.items() if not opts.only or name in opts.only}
    results = {name: summary(runs) for name, runs in train_rounds(opts, variants).items()}
    trl_name = max((n for n in ("trl-defaults", "trl-fp32") if n in results), key=lambda n: results[n]["tokens_per_s"])
    trl, ours = results[trl_name], results["tunelab"]
    print(f"\nmedians over {opts.rounds} rounds, {opts.steps} steps ({opts.warmup} warm-up), against {trl_name}:")
    for name, r in results.items():
        print(f"  {name:22s} {r['tokens_per_s']:7.1f} tok/s ({r['tokens_per_s'] / trl['tokens_per_s']:.2f}x)  "
              f"{r['supervised_per_s']:6.1f} sup/s ({r['supervised_per_s'] / trl['supervised_per_s']:.2f}x)  "
              f"loss {r['loss']:.4f} ({(r['loss'] - trl['loss']) / trl['loss']:+.2%})  "
              f"peak RSS {r['rss'] / 2**20:.0f} MiB ({r['rss'] / trl['rss']:.2f}x)  supervised {r['supervised']}"
              + (f"  peak GPU {r['gpu'] / 2**20:.0f} MiB  MFU {r['mfu']:.1%}" if cuda else ""))
    ev = run_child("eval", opts, [f"train.precision={opts.eval_precision}"])
    eval_ratio = ev["loop_s"] / ev["batched_s"]
    print(f"\neval on {ev['examples']} held-out prompts in {ev['precision']}: batched "
          f"{ev['examples'] / ev['batched_s']:.2f} ex/s, "
          f"one at a time {ev['examples'] / ev['loop_s']:.2f} ex/s ({eval_ratio:.2f}x); identical outputs "
          f"{ev['identical']}/{ev['examples']}")
    if opts.data_mb:
        data_memory(opts)
    loss_diff = abs(ours["loss"] - trl["loss"]) / trl["loss"]
    gpu = (f" mfu={ours['mfu']:.4f} qlora_peak_gpu_ratio_vs_lora={results['tunelab-qlora']['gpu'] / ours['gpu']:.3f}"
           if cuda else "")
    print(f"train_tokens_per_s_ratio_vs_trl={ours['tokens_per_s'] / trl['tokens_per_s']:.3f} "
          f"eval_examples_per_s_ratio_vs_loop={eval_ratio:.3f} loss_rel_diff={loss_diff:.4f}{gpu}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per training run")
    p.add_argument("--warmup", type=int, default=3, help="steps excluded from the speed")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    p.add_argument("--eval-examples", type=int, default=60, help="held-out prompts generated (the quickstart has 60)")
    p.add_argument("--data-mb", type=int, default=50, help="size of the generated JSONL read for memory (0: skip)")
    p.add_argument("--ablation", action="store_true", help="also run each speed switch alone")
    p.add_argument("--only", type=lambda text: text.split(","), default=[], help="with --ablation: these rows of it")
    p.add_argument("--eval-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="precision of both generation timings (a run scores in its train.precision)")
    p.add_argument("--trl-bf16", action="store_true", help="run TRL's bf16 defaults even on a CPU without native bf16")
    p.add_argument("--model", default="smollm2-135m-instruct", help="tiny-random-llama: a smoke test of this script")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    opts = p.parse_args()
    if not opts.child:
        return parent(opts)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    opts.variant = opts.child
    record = {"marks": [], "losses": [], "supervised": 0}
    kind = "trl" if opts.child.startswith("trl") else opts.child if opts.child in ("eval", "data") else "tunelab"
    {"trl": child_trl, "tunelab": child_tunelab, "eval": child_eval, "data": child_data}[kind](opts, record)
    record["peak_rss"] = rss_bytes()
    import torch

    if torch.cuda.is_available():
        record["peak_gpu"] = int(torch.cuda.max_memory_allocated())
    print("RESULT " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
