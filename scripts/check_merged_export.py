"""Prove a merged export runs with no tunelab: a fresh venv holding only torch and transformers (the pinned
versions, installed by pip from its cache and local wheels) loads the directory, applies its chat template
and generates; the greedy reply must equal the one computed here.

    python scripts/check_merged_export.py MERGED_DIR [--venv DIR] [--prompt TEXT]

The venv is kept (default $TUNELAB_CACHE/plain-venv) and reused while its versions match, so only the
first call pays for the install. Exit 0 when the replies match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers")

# Runs inside the plain venv: it must not find tunelab or peft, and must load and generate on its own.
CHILD = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("tunelab") is None, "tunelab is importable in the plain venv"
assert importlib.util.find_spec("peft") is None, "peft is importable in the plain venv"
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
new = out[0, ids["input_ids"].shape[1]:].tolist()
print(json.dumps({"ids": new, "text": tokenizer.decode(new, skip_special_tokens=True)}))
"""


def greedy_here(path: Path, prompt: str, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def plain_venv(venv: Path) -> Path:
    """A venv with exactly this environment's torch and transformers versions; created once, then reused."""
    pins = [f"{name}=={metadata.version(name)}" for name in PACKAGES]
    stamp = venv / "tunelab-pins.txt"
    python = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text().split() == pins:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    stamp.write_text("\n".join(pins) + "\n")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("merged_dir", type=Path)
    parser.add_argument("--venv", type=Path, default=None, help="plain venv to create or reuse")
    parser.add_argument("--prompt", default="Extract name, age and city as JSON: Ana is 31 and lives in Porto.")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    if args.venv is None:
        from tunelab.models.registry import cache_dir

        args.venv = cache_dir() / "plain-venv"
    started = time.monotonic()
    python = plain_venv(args.venv)
    ready = time.monotonic()
    child = subprocess.run([str(python), "-c", CHILD, str(args.merged_dir), args.prompt, str(args.max_new_tokens)],
                           capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if child.returncode != 0:
        print(f"plain venv failed to load or generate:\n{child.stderr[-2000:]}", file=sys.stderr)
        return 1
    there = json.loads(child.stdout.strip().splitlines()[-1])
    here = greedy_here(args.merged_dir, args.prompt, args.max_new_tokens)
    same = there["ids"] == here
    print(json.dumps({"venv": str(args.venv), "venv_seconds": round(ready - started, 1),
                      "check_seconds": round(time.monotonic() - ready, 1), "reply": there["text"],
                      "same_as_tunelab_env": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
