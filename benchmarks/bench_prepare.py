"""`tunelab data prepare` on a large JSONL: peak memory against the file's size, and throughput.

Generates a prompt/completion file of the size asked for (Zipf-distributed words under a few shared
instructions; 3% exact copies, 3% edited copies, 0.1% broken lines), then runs, each in its own
process and measured by the kernel (peak RSS from wait4):

- `tunelab data prepare FILE -o DIR` (validate, clean, count tokens, deduplicate, split, write);
- the plain-library baseline: `datasets.load_dataset("json")` + a batched `.map` that tokenizes every
  row (Arrow on disk, memory-mapped; no cleaning, deduplication or split), on the file less its broken
  lines (the loader stops at the first one).

Each size is prepared twice: peak RSS must not grow with the file, only by a few numbers per row.

    python benchmarks/bench_prepare.py                  # 32 and 128 MiB files
    python benchmarks/bench_prepare.py --sizes 1024     # a 1 GiB file

Last line (machine-readable): prepare_file_mib=<largest> prepare_peak_rss_mib=<its peak>
prepare_rss_per_file=<peak / size> datasets_peak_rss_mib=<baseline's peak> prepare_rows_per_s=<...>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER = "smollm2-135m-instruct"
INSTRUCTIONS = ["Summarise the passage below in one sentence.", "Answer the question using the text.",
                "Rewrite the paragraph in plain English.", "List the three main points of this note."]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "da", "gu", "ho", "ji", "be", "fo"]


def make_file(path: Path, mib: int, seed: int = 0) -> int:
    """Write about `mib` MiB of rows to path; returns the number of lines."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(40_000)})[:20_000]
    cum = list(_cumulative([1 / (rank + 1) for rank in range(len(vocab))]))
    recent: list[dict[str, str]] = []
    lines = 0
    with open(path, "w", encoding="utf-8") as out:
        while out.tell() < mib * 2**20:
            out.write(_line(rng, vocab, cum, recent) + "\n")
            lines += 1
    return lines


def _cumulative(weights: list[float]) -> list[float]:
    total = 0.0
    for w in weights:
        total += w
        yield total


def _line(rng: random.Random, vocab: list[str], cum: list[float], recent: list[dict[str, str]]) -> str:
    draw = rng.random()
    if draw < 0.001:
        return '{"prompt": "a broken line' if rng.random() < 0.5 else '{"prompt": 7, "completion": "x"}'
    if recent and draw < 0.03:
        return json.dumps(rng.choice(recent))
    if recent and draw < 0.06:
        row = dict(rng.choice(recent))
        words = row["completion"].split(" ")
        words[rng.randrange(len(words))] = rng.choice(vocab)
        return json.dumps({**row, "completion": " ".join(words)})

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, cum_weights=cum, k=k))

    row = {"prompt": f"{rng.choice(INSTRUCTIONS)}\n\n{words(rng.randint(40, 120))}",
           "completion": " " + words(rng.randint(10, 40))}
    recent.append(row)
    del recent[:-1000]
    return json.dumps(row)


PREPARE = """
import sys
from pathlib import Path
from tunelab.data.check import load_tokenizer
from tunelab.data.prepare import PrepareOptions, prepare
report = prepare(Path(sys.argv[1]), Path(sys.argv[2]), load_tokenizer(sys.argv[3]), PrepareOptions())
print(report["rows_read"], report["rejected"], report["duplicates"]["exact"], report["duplicates"]["near"])
"""

BASELINE = """
import sys
import datasets
from tunelab.data.check import load_tokenizer
tok = load_tokenizer(sys.argv[3])
data = datasets.load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
data = data.map(lambda b: tok([p + c for p, c in zip(b["prompt"], b["completion"])]), batched=True,
                remove_columns=data.column_names)
print(len(data), 0, 0, 0)
"""


def parsable(data: Path) -> Path:
    """The rows the datasets loader can read (it stops at the first broken line; tunelab rejects it)."""
    target = data.with_suffix(".parsable.jsonl")
    with open(data, encoding="utf-8") as rows, open(target, "w", encoding="utf-8") as out:
        for line in rows:
            try:
                if isinstance(json.loads(line).get("prompt"), str):
                    out.write(line)
            except json.JSONDecodeError:
                continue
    return target


def measure(script: str, data: Path, out: Path) -> dict[str, float]:
    """Run script in a fresh process; its wall time, peak RSS (kernel's count) and what it printed."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", script, str(data), str(out), TOKENIZER],
                             stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    printed = child.stdout.read().split()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{script.strip().splitlines()[-1]} failed on {data}")
    return {"s": seconds, "rss_mib": usage.ru_maxrss / 1024, "rows": int(printed[0]),
            "counts": [int(x) for x in printed[1:]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128", help="file sizes in MiB, comma-separated")
    parser.add_argument("--no-baseline", action="store_true", help="skip the datasets baseline")
    args, _ = parser.parse_known_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        result = {}
        for mib in sizes:
            data = Path(tmp) / f"rows-{mib}.jsonl"
            lines = make_file(data, mib)
            ours = measure(PREPARE, data, Path(tmp) / f"prepared-{mib}")
            base = None if args.no_baseline else measure(BASELINE, parsable(data), Path(tmp) / f"hf-cache-{mib}")
            rejected, exact, near = ours["counts"]
            print(f"{mib:>6} MiB, {lines:,} rows: tunelab prepare {ours['s']:7.1f} s "
                  f"({lines / ours['s']:,.0f} rows/s), peak RSS {ours['rss_mib']:,.0f} MiB "
                  f"({ours['rss_mib'] / mib:.2f}x the file); {rejected} rejected, {exact} exact and {near} near "
                  "duplicates dropped", flush=True)
            if base:
                print(f"{'':>6}      datasets load+tokenize {base['s']:7.1f} s, peak RSS {base['rss_mib']:,.0f} MiB "
                      f"({base['rss_mib'] / mib:.2f}x the file)", flush=True)
            result = {"mib": mib, "ours": ours, "base": base, "lines": lines}
            for path in Path(tmp).glob("*"):
                subprocess.run(["rm", "-rf", str(path)], check=True)
    base_rss = result["base"]["rss_mib"] if result["base"] else float("nan")
    print(f"prepare_file_mib={result['mib']} prepare_peak_rss_mib={result['ours']['rss_mib']:.0f} "
          f"prepare_rss_per_file={result['ours']['rss_mib'] / result['mib']:.3f} "
          f"datasets_peak_rss_mib={base_rss:.0f} prepare_rows_per_s={result['lines'] / result['ours']['s']:.0f}")


if __name__ == "__main__":
    main()
