"""`tunelab serve`'s inference engine: many LoRA adapters of one base, and the base, served in shared batches,
against one-at-a-time `generate`; the same load on a single merged model as the speed reference; time to the
first token with a cached adapter and with a cold one.

Adapters: freshly initialised LoRA (r16, alpha 32, all linear layers of the bundled SmolLM2-135M-Instruct) whose
B matrices are set to seeded random normals (std --b-std) instead of zeros, so each answers differently from the
base and from the others; they are saved as finished-looking tunelab runs, which the engine reads as it reads a
job's run. No training: the speed of serving does not depend on what the adapters learned.

Load: --clients client threads start together; client k asks target k mod 5 (the base and the 4 adapters) for
--requests greedy chat answers of at most --max-tokens tokens, one after another, each prompt its own.
  batched      the engine (serve.inference.Engine): requests that arrive together decode in one generate, each
               row with its adapter (PEFT's mixed-adapter batches), every adapter loaded once into one base
  one-at-a-time  every request alone, one after another, each on its own target's model loaded by its method
               (plain transformers generate; what the engine did before batching)
  merged       the same requests through the same batching, all on one model with adapter 1 merged in
Answers of batched and one-at-a-time must be identical (greedy); the script exits 1 if any differs.

    PYTHONPATH=src python benchmarks/bench_serve_adapters.py
    PYTHONPATH=src python benchmarks/bench_serve_adapters.py --requests 2 --max-tokens 48
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
TOPICS = ["rain", "bread", "bicycles", "volcanoes", "libraries", "bees", "tides", "glass", "maps", "owls",
          "coffee", "bridges", "comets", "paper", "salt", "wind", "clocks", "rivers", "chess", "moss",
          "lighthouses", "tea", "deserts", "violins"]


def make_runs(root: Path, count: int, b_std: float) -> list:
    """`count` LoRA adapters as finished-looking runs of the bundled model, each with its own random B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.config import dump_config, load_config
    from tunelab.models import resolve_model
    from tunelab.rundir import RunDir
    from tunelab.serve.catalog import Target

    train = root / "train.jsonl"
    train.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(12)), encoding="utf-8")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model(MODEL)),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    targets = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * b_std)
        run = RunDir(root / f"adapter-{i + 1}")
        config = load_config(None, [f"data.train={train}", f"model={MODEL}", "method=lora", "task=causal_lm",
                                    f"output_dir={run.path}"])
        run.write_header(dump_config(config), {})
        model.save_pretrained(run.model_dir)
        run.write_summary({})
        targets.append(Target(f"ft:adapter-{i + 1}", MODEL, run.path))
    return targets


def ask(i: int, max_tokens: int) -> object:
    from tunelab.serve.requests import GenerationRequest

    topic = TOPICS[i % len(TOPICS)]
    return GenerationRequest(messages=[{"role": "user", "content": f"Tell me one fact about {topic}."}],
                             max_tokens=max_tokens, temperature=0.0)


def plan(targets: list, clients: int, requests: int, max_tokens: int) -> list[list[tuple]]:
    """Per client, its (target, request) list in the order it sends them."""
    return [[(targets[k % len(targets)], ask(k * requests + j, max_tokens)) for j in range(requests)]
            for k in range(clients)]


def answer(pieces) -> dict:
    start, first, text = time.perf_counter(), None, ""
    for piece in pieces:
        first = first if first is not None else time.perf_counter() - start
        text += piece.text
    return {"text": text, "tokens": piece.usage["completion_tokens"], "first": first}


def batched(engine, load: list[list[tuple]]) -> tuple[float, list[list[dict]]]:
    """Every client in its own thread, started together; the wall time until the last answer."""
    results: list[list[dict]] = [[] for _ in load]
    go = threading.Barrier(len(load) + 1)

    def client(k: int) -> None:
        go.wait()
        for target, request in load[k]:
            results[k].append(answer(engine.stream(target, request)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(load))]
    for thread in threads:
        thread.start()
    go.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def one_at_a_time(models: dict, load: list[list[tuple]]) -> tuple[float, list[list[dict]]]:
    """The same requests, each alone on its own target's model, one after another."""
    from tunelab.serve.inference import generate_stream, prompt_ids

    results: list[list[dict]] = [[] for _ in load]
    start = time.perf_counter()
    for j in range(max(len(c) for c in load)):  # the order requests arrive in: each client's j-th together
        for k, requests in enumerate(load):
            target, request = requests[j]
            entry = models[target.key]
            results[k].append(answer(generate_stream(entry, prompt_ids(entry.tokenizer, request), request)))
    return time.perf_counter() - start, results


def merged_engine(target, engine_options: dict):
    """The batching engine over one plain model: adapter 1 merged into the base."""
    from tunelab.serve.batching import SharedBase
    from tunelab.serve.inference import load

    tokenizer, model = load(target)
    return SharedBase(tokenizer, model.merge_and_unload().eval(), **engine_options)


def merged(shared, load: list[list[tuple]]) -> tuple[float, list[list[dict]]]:
    from tunelab.serve.inference import prompt_ids

    class Plain:  # every request on the merged model, through the same scheduler
        def stream(self, target, request):
            return shared.stream(None, prompt_ids(shared.tokenizer, request), request)

    return batched(Plain(), load)


def first_token(engine, target, request, times: int) -> float:
    return statistics.median(answer(engine.stream(target, request))["first"] for _ in range(times))


def report(name: str, seconds: float, results: list[list[dict]], reference: float | None) -> float:
    tokens = sum(r["tokens"] for client in results for r in client)
    speed = tokens / seconds
    ratio = f"  {speed / reference:.2f}x one-at-a-time" if reference else ""
    print(f"  {name:14s} {tokens:5d} tokens in {seconds:6.1f} s = {speed:6.1f} tok/s{ratio}", flush=True)
    return speed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--b-std", type=float, default=0.05, help="std of the adapters' random B matrices")
    parser.add_argument("--window-ms", type=float, default=20)
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of the three modes, alternating")
    args = parser.parse_args()

    from tunelab.serve.catalog import Target
    from tunelab.serve.inference import Engine, Loaded, load

    options = {"max_adapters": 8, "max_batch": args.clients, "window_s": args.window_ms / 1000}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_runs(Path(tmp), 4 + args.ttft_repeats, args.b_std)
        targets, cold = [Target(MODEL, MODEL), *adapters[:4]], adapters[4:]
        load_plan = plan(targets, args.clients, args.requests, args.max_tokens)
        print(f"{args.clients} clients x {args.requests} requests (greedy, at most {args.max_tokens} tokens) over "
              f"the base and 4 LoRA adapters of {MODEL}; batch window {args.window_ms:g} ms", flush=True)

        engine = Engine(max_loaded=2, **options)
        for target in targets:  # warm: the base and every adapter loaded, first calls paid
            answer(engine.stream(target, ask(0, 2)))
        models = {t.key: Loaded(*load(t)) for t in targets}
        for entry_target in targets:
            one_at_a_time(models, [[(entry_target, ask(0, 2))]])
        shared_merged = merged_engine(targets[1], options)
        merged(shared_merged, [[(targets[1], ask(0, 2))]])

        speeds: dict[str, list[float]] = {"one-at-a-time": [], "batched": [], "merged": []}
        for round_ in range(args.rounds):  # alternating, so a busy moment of the machine hits all three
            print(f"round {round_ + 1}:")
            alone_s, alone = one_at_a_time(models, load_plan)
            batch_s, together = batched(engine, load_plan)
            merged_s, on_merged = merged(shared_merged, load_plan)
            speeds["one-at-a-time"].append(report("one-at-a-time", alone_s, alone, None))
            speeds["batched"].append(report("batched", batch_s, together, speeds["one-at-a-time"][-1]))
            speeds["merged"].append(report("merged", merged_s, on_merged, speeds["one-at-a-time"][-1]))
        reference, speed, merged_speed = (statistics.median(speeds[k]) for k in speeds)
        print(f"medians over {args.rounds} round(s): one-at-a-time {reference:.1f} tok/s, batched {speed:.1f} "
              f"({speed / reference:.2f}x), merged {merged_speed:.1f} ({merged_speed / reference:.2f}x)")

        same = [a["text"] == b["text"] for ca, cb in zip(alone, together) for a, b in zip(ca, cb)]
        print(f"greedy answers identical, batched vs one-at-a-time: {sum(same)}/{len(same)}")
        for k, (ca, cb) in enumerate(zip(alone, together)):
            for a, b in zip(ca, cb):
                if a["text"] != b["text"]:
                    print(f"  client {k} differs:\n    alone  : {a['text']!r}\n    batched: {b['text']!r}")
        one = ask(0, args.max_tokens)
        distinct = len({answer(engine.stream(t, one))["text"] for t in targets})
        print(f"distinct answers of the 5 targets to one prompt: {distinct} (the adapters change the answers)")

        request = ask(1, 8)
        cached = first_token(engine, targets[1], request, args.ttft_repeats)
        cold_s = statistics.median(answer(engine.stream(t, request))["first"] for t in cold)
        print(f"time to first token: cached adapter {cached * 1000:.0f} ms, cold adapter {cold_s * 1000:.0f} ms "
              f"(median of {args.ttft_repeats}; cold = loaded from disk into the base on this request)")
        print(f"batched_tokens_per_s_ratio_vs_one_at_a_time={speed / reference:.2f} "
              f"batched_vs_merged={speed / merged_speed:.2f} greedy_identical={all(same)} "
              f"ttft_cached_ms={cached * 1000:.0f} ttft_cold_ms={cold_s * 1000:.0f}")
        return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
