"""Prove a merged export runs with no tunelab: a fresh venv holding only torch, transformers and what they
require loads the directory, applies its chat template and generates; the greedy reply must equal the one
computed here.

    python scripts/check_merged_export.py MERGED_DIR [--venv DIR] [--prompt TEXT]

The venv (`python -m venv --without-pip`, in a temp dir unless --venv is given) gets links to exactly the
distributions in the requirement closure of torch and transformers as installed here (same versions, no
network, seconds to build); tunelab, peft and everything else the tunelab environment holds are absent,
and the child checks that. Exit 0 when the replies match, 1 otherwise. `make test` runs it on a tiny
export (tests/test_export.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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


def requirement_closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, transitively (extras off; requirements whose markers do not
    hold here, or that are not installed, such as CUDA wheels on a CPU build, left out)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def plain_venv(venv: Path) -> Path:
    """A new venv whose site-packages links to the requirement closure of torch and transformers only."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in requirement_closure(PACKAGES):
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".." and not f.parts[0].endswith(".pth")}:
            target = site / top
            if not target.exists():
                target.symlink_to(Path(dist.locate_file(top)).resolve())
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("merged_dir", type=Path)
    parser.add_argument("--venv", type=Path, default=None, help="where to build the plain venv (default: a temp dir)")
    parser.add_argument("--prompt", default="Extract name, age and city as JSON: Ana is 31 and lives in Porto.")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="plain-venv-") as tmp:
        return check(args, args.venv or Path(tmp) / "venv")


def check(args: argparse.Namespace, venv: Path) -> int:
    started = time.monotonic()
    python = plain_venv(venv)
    ready = time.monotonic()
    child = subprocess.run([str(python), "-c", CHILD, str(args.merged_dir), args.prompt, str(args.max_new_tokens)],
                           capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if child.returncode != 0:
        print(f"plain venv failed to load or generate:\n{child.stderr[-2000:]}", file=sys.stderr)
        return 1
    there = json.loads(child.stdout.strip().splitlines()[-1])
    here = greedy_here(args.merged_dir, args.prompt, args.max_new_tokens)
    same = there["ids"] == here
    print(json.dumps({"venv": str(venv), "venv_seconds": round(ready - started, 1),
                      "check_seconds": round(time.monotonic() - ready, 1), "reply": there["text"],
                      "same_as_tunelab_env": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
