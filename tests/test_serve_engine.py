"""The serving engine: concurrent requests for LoRA adapters of one base and for the base itself run in one
batched `generate`, each greedy answer the one its target gives alone; adapters load on first use into an LRU;
each row keeps its own max_tokens and stop strings; a seeded request answers as it does alone; a broken
adapter fails only its own request; a target that cannot share the base still answers alone."""

from __future__ import annotations

import threading

import pytest

import tests.conftest as c
from tunelab.methods import METHODS
from tunelab.serve.batching import Adapter, Row, take
from tunelab.serve.catalog import Target
from tunelab.serve.inference import NOT_SHARED, Engine, Loaded, generate_stream, load, prompt_ids
from tunelab.serve.requests import GenerationRequest

BASE = "tiny-random-llama"


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Finished-looking runs of the tiny model holding freshly initialised adapters with random (non-zero)
    weights, so each one answers differently: two LoRA, one DoRA (which PEFT keeps out of mixed-adapter batches)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.config import dump_config, load_config
    from tunelab.models import resolve_model
    from tunelab.rundir import RunDir

    root = tmp_path_factory.mktemp("engine")
    train = c.write_jsonl(root / "train.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)])
    made = {"base": Target(BASE, BASE)}
    for seed, (name, method, peft_config) in enumerate([
            ("lora-a", "lora", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)),
            ("lora-b", "lora", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)),
            ("dora", "dora", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                                        use_dora=True))]):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model(BASE)), peft_config)
        run = RunDir(root / name)
        config = load_config(None, [f"data.train={train}", f"model={BASE}", f"method={method}", "task=causal_lm",
                                    f"output_dir={run.path}"])
        run.write_header(dump_config(config), {})
        model.save_pretrained(run.model_dir)
        run.write_summary({})
        made[name] = Target(f"ft:{name}", BASE, run.path)
    return made


def ask(n: int, max_tokens: int = 10, **options) -> GenerationRequest:
    """Prompts of different lengths, so a batch pads them."""
    words = " ".join(["tell me more"] * n)
    return GenerationRequest(messages=[{"role": "user", "content": f"Question {n}: {words}"}], max_tokens=max_tokens,
                             temperature=0.0, **options)


ALONE: dict[str, Loaded] = {}  # each target's own model, loaded once for the module


def alone(target: Target, request: GenerationRequest) -> tuple[str, str, dict]:
    """The one-at-a-time answer: the target's own model, loaded by its method, generating on its own."""
    if target.key not in ALONE:
        ALONE[target.key] = Loaded(*load(target))
    entry = ALONE[target.key]
    return joined(generate_stream(entry, prompt_ids(entry.tokenizer, request), request))


def joined(pieces) -> tuple[str, str, dict]:
    pieces = list(pieces)
    return "".join(p.text for p in pieces), pieces[-1].finish_reason, pieces[-1].usage


def concurrently(engine: Engine, jobs: list[tuple[Target, GenerationRequest]]) -> list[tuple[str, str, dict]]:
    return together(lambda i: joined(engine.stream(*jobs[i])), len(jobs))


def together(ask_one, n: int) -> list:
    """ask_one(0..n-1), each in its own thread, started together; a thread's error is raised here."""
    results: list = [None] * n

    def one(i: int) -> None:
        try:
            results[i] = ask_one(i)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, Exception):
            raise result
    assert all(r is not None for r in results), "a request got no answer"
    return results


@pytest.fixture
def generate_calls(monkeypatch):
    """Every transformers `generate` call, with its batch size."""
    from transformers.generation.utils import GenerationMixin

    calls: list[int] = []
    original = GenerationMixin.generate

    def counted(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counted)
    return calls


def test_two_adapters_and_the_base_run_in_one_batch_with_their_own_answers(targets, generate_calls):
    jobs = [(targets["lora-a"], ask(1)), (targets["base"], ask(4)), (targets["lora-b"], ask(2))]
    engine = Engine(window_s=1.0)
    got = concurrently(engine, jobs)
    assert generate_calls == [3]  # one generate for all three
    expected = [alone(target, request) for target, request in jobs]
    assert got == expected
    assert len({text for text, _, _ in got}) == 3  # the adapters really change the answers
    assert list(engine.loaded) == [f"shared|{BASE}"]  # one base model serves all three


def test_adapters_beyond_the_limit_unload_least_recently_used_first(targets):
    engine = Engine(max_adapters=1, window_s=0.0)
    first = joined(engine.stream(targets["lora-a"], ask(1)))
    joined(engine.stream(targets["lora-b"], ask(1)))
    shared = engine.loaded[f"shared|{BASE}"]
    assert set(shared.model.peft_config) == {Adapter(targets["lora-b"].run_dir / "model").name}
    assert joined(engine.stream(targets["lora-a"], ask(1))) == first  # loads again, same answer
    assert set(shared.model.peft_config) == {Adapter(targets["lora-a"].run_dir / "model").name}


def test_each_row_keeps_its_own_max_tokens_and_stop_strings(targets, generate_calls):
    reference, _, _ = alone(targets["lora-b"], ask(2, max_tokens=12))
    at = next(k for k in range(2, len(reference) - 2) if reference.find(reference[k:k + 2]) == k)
    stop = reference[at:at + 2]  # a stop string that first shows inside the answer
    generate_calls.clear()
    jobs = [(targets["lora-b"], ask(2, max_tokens=12, stop=[stop])), (targets["lora-a"], ask(3, max_tokens=3)),
            (targets["base"], ask(1, max_tokens=12))]
    (cut, cut_reason, cut_usage), (short, short_reason, short_usage), (full, _, full_usage) = \
        concurrently(Engine(window_s=1.0), jobs)
    assert generate_calls == [3]
    assert (cut, cut_reason) == (reference[:at], "stop")
    assert cut_usage["completion_tokens"] < 12
    assert (short_reason, short_usage["completion_tokens"]) == ("length", 3)
    assert short == alone(targets["lora-a"], ask(3, max_tokens=3))[0]
    assert (full, full_usage) == alone(targets["base"], ask(1, max_tokens=12))[::2]


def test_answers_stream_as_they_are_decoded(targets):
    pieces = list(Engine(window_s=0.0).stream(targets["lora-a"], ask(1, max_tokens=8)))
    assert len(pieces) > 2  # text pieces before the last one, not one block at the end
    assert pieces[-1].usage["completion_tokens"] == 8


def test_a_target_that_cannot_share_the_base_answers_alone(targets, generate_calls):
    engine = Engine(window_s=0.0)
    assert engine._route(targets["dora"]) is NOT_SHARED
    got = joined(engine.stream(targets["dora"], ask(2)))
    assert got == alone(targets["dora"], ask(2))
    assert list(engine.loaded) == [targets["dora"].key]
    assert got[0] != alone(targets["base"], ask(2))[0]


def test_a_batch_holds_one_sampling_group_and_at_most_max_adapters():
    def row(adapter: str | None, temperature: float = 0.0, seed: int | None = None) -> Row:
        return Row(Adapter(c.REPO / adapter) if adapter else None, [1],
                   GenerationRequest(prompt="x", temperature=temperature, seed=seed))

    greedy_a, sampled, greedy_b, greedy_c, base = row("a"), row("a", 0.7), row("b"), row("c"), row(None)
    assert take([greedy_a, sampled, greedy_b, greedy_c, base], 8, 2) == [greedy_a, greedy_b, base]
    assert take([greedy_a, greedy_b, base], 2, 8) == [greedy_a, greedy_b]
    seeded = [row("a", 0.7, seed=1), row("a", 0.7, seed=1)]
    assert take(seeded, 8, 8) == seeded[:1]  # a seeded request alone: its seed, not its neighbours, decides
    also_sampled = row("b", 0.7)
    assert take([sampled, row("b", 0.9), also_sampled], 8, 8) == [sampled, also_sampled]


SHARING = sorted(name for name, m in METHODS.items() if m.shares_base)


@pytest.mark.parametrize("name", SHARING)
def test_every_method_that_shares_the_base_joins_a_mixed_batch_with_its_own_answer(name, tiny_config, tmp_path):
    """The contract behind `shares_base`: what the method saves loads into the plain base and, in a batch with the
    base's own rows, answers as the method's own loader does alone."""
    import torch

    from tunelab.export.source import Source, load_tuned
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair
    from tunelab.serve.batching import SharedBase

    config = tiny_config(f"method={name}", "task=causal_lm")
    method = METHODS[name]
    tokenizer, base = load_pair(resolve_model(BASE), ModelSpec(), LoadRules())
    tuned = method.apply(base, config, ModelSpec())
    torch.manual_seed(0)
    with torch.no_grad():
        for param_name, param in tuned.named_parameters():
            if "lora_B" in param_name:
                param.normal_(std=0.5)  # a trained-looking adapter: it changes the answers
    method.save(tuned, tmp_path / "run" / "model")
    own_tokenizer, own = load_tuned(Source(tmp_path / "run", config, {}))
    entry = Loaded(own_tokenizer, own)
    shared = SharedBase(*load_pair(resolve_model(BASE), ModelSpec(), LoadRules()), window_s=1.0)
    adapter = Adapter(tmp_path / "run" / "model")
    jobs = [(adapter, ask(2)), (None, ask(2)), (None, ask(1))]  # the same prompt with and without, one shorter
    got = together(lambda i: joined(shared.stream(jobs[i][0], prompt_ids(tokenizer, jobs[i][1]), jobs[i][1])),
                   len(jobs))
    assert got[0] == joined(generate_stream(entry, prompt_ids(tokenizer, ask(2)), ask(2)))
    assert got[0][0] != got[1][0]


def test_a_seeded_sampled_request_answers_as_it_does_alone(targets):
    request = ask(2, max_tokens=8, seed=7)
    request.temperature, request.top_p = 1.0, 0.9
    engine = Engine(window_s=0.0)
    assert joined(engine.stream(targets["lora-a"], request)) == alone(targets["lora-a"], request)


def test_an_adapter_that_cannot_load_fails_its_own_request_only(targets, tmp_path):
    from tunelab.models import resolve_model
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair
    from tunelab.serve.batching import SharedBase

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json", encoding="utf-8")
    tokenizer, model = load_pair(resolve_model(BASE), ModelSpec(), LoadRules())
    shared = SharedBase(tokenizer, model, window_s=1.0)
    jobs = [(Adapter(tmp_path / "broken"), ask(1)), (None, ask(2))]

    def one(i: int):
        try:
            return joined(shared.stream(jobs[i][0], prompt_ids(tokenizer, jobs[i][1]), jobs[i][1]))
        except Exception as err:  # the broken adapter's error, handed to its own request
            return f"error: {type(err).__name__}"

    broken, fine = together(one, 2)
    assert broken.startswith("error:")
    assert fine == alone(targets["base"], ask(2))
