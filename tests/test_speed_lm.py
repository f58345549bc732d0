"""Training shortcuts of the LM tasks (`speed` section) leave the loss unchanged: the supervised-only head,
the shared prompt prefix read once per batch, flattened (padding-free) batches, gradient accumulation
through them, length grouping, bf16 detection; and batched generation gives the loop's answers."""

from __future__ import annotations

import random

import pytest
import torch

from tunelab.data.tokens import IGNORE
from tunelab.models.loading import LoadRules, ModelSpec, load_pair
from tunelab.scoring.lm_loss import lm_parts, shared_length, supervised_nll
from tunelab.tasks.lm import Collator, Encoded, FlatCollator, LmPrepared, SpeedSettings, heldout_loss
from tunelab.tasks.sft import Sft
from tunelab.precision import cpu_has_bf16
from tunelab.train.trainer import precision_flags


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    return load_pair(tiny_model_dir, ModelSpec("causal_lm"), LoadRules())


PREFIX = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]  # what every row opens with, as a system prompt is


def examples(n: int = 8, seed: int = 0, prefix: list[int] = PREFIX) -> list[dict]:
    """Rows of different lengths opening with `prefix`, whose last few tokens are supervised, as SFT rows are."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length, answer = rng.randint(6, 30), rng.randint(2, 5)
        ids = prefix + [rng.randint(10, 999) for _ in range(length)]
        rows.append(Encoded(ids, [IGNORE] * (len(ids) - answer) + ids[-answer:]).as_row())
    return rows


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear",
                                            init_lora_weights=False))  # a non-zero adapter, so it must be applied


@pytest.mark.parametrize("wrap", [False, True], ids=["full", "lora"])
def test_supervised_head_loss_equals_the_models_own(tiny, wrap):
    import copy

    model = lora(copy.deepcopy(tiny[1])) if wrap else tiny[1]
    batch = Collator(0)(examples())
    own = model(**batch).loss
    nll, rows = supervised_nll(lm_parts(model), batch)
    assert nll.mean().item() == pytest.approx(own.item(), rel=1e-5)
    assert nll.numel() == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert rows.tolist() == sorted(rows.tolist()) and rows.max().item() == batch["input_ids"].shape[0] - 1


def decoder_inputs(model) -> tuple[list[tuple[int, ...]], object]:
    """The shapes of the token ids each decoder call embeds (a hook on the embedding, not on the model)."""
    shapes: list[tuple[int, ...]] = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hook = base.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes, hook


def test_shared_prefix_gives_the_models_losses_and_gradients_reading_the_prefix_once(tiny):
    import copy

    model = lora(copy.deepcopy(tiny[1]))
    batch = Collator(0)(examples())
    width = batch["input_ids"].shape[1]
    parts = lm_parts(model)
    assert shared_length(parts[0], batch) == len(PREFIX)
    results = []
    for share in (False, True):
        model.zero_grad()
        shapes, hook = decoder_inputs(model)
        nll, rows = supervised_nll(parts, batch, shared_prefix=share)
        hook.remove()
        nll.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((nll.detach(), rows, grads, shapes))
    (plain, plain_rows, plain_grads, plain_shapes), (shared, shared_rows, shared_grads, shared_shapes) = results
    assert plain_shapes == [(8, width)] and shared_shapes == [(1, len(PREFIX)), (8, width - len(PREFIX))]
    assert torch.equal(plain_rows, shared_rows) and torch.allclose(plain, shared, atol=1e-5)
    assert len(plain_grads) == 2 * 7 * 2  # LoRA A and B on 7 linear layers of each of the 2 decoder layers
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0 and torch.allclose(grad, shared_grads[name], rtol=1e-4, atol=1e-6), name


def test_shared_prefix_ends_before_the_first_supervised_prediction(tiny):
    decoder = lm_parts(tiny[1])[0]
    rows = examples()
    early = Encoded(rows[0]["input_ids"], [IGNORE] * 10 + rows[0]["input_ids"][10:]).as_row()  # labels from 10 on
    assert shared_length(decoder, Collator(0)([early, *rows[1:]])) == 9  # position 9 predicts label 10
    assert shared_length(decoder, Collator(0)(examples(prefix=PREFIX[:7]))) == 0  # too short to pay
    assert shared_length(decoder, Collator(0)(rows[:1])) == 0  # one row: nothing to share
    assert shared_length(decoder, FlatCollator()(rows)) == 0  # flattened: one row with position ids


def test_no_shared_prefix_under_gradient_checkpointing(tiny):
    import copy

    model = copy.deepcopy(tiny[1])
    model.gradient_checkpointing_enable()  # checkpointed layers drop the cache the rows would continue from
    assert shared_length(lm_parts(model)[0], Collator(0)(examples())) == 0


def test_flattened_batch_has_the_padded_batchs_loss(tiny):
    rows = examples()
    padded, flat = Collator(0)(rows), FlatCollator()(rows)
    assert flat["input_ids"].shape[0] == 1 and flat["input_ids"].numel() == padded["attention_mask"].sum()
    parts = lm_parts(tiny[1])
    padded_nll, _ = supervised_nll(parts, padded)
    flat_nll, _ = supervised_nll(parts, {k: v for k, v in flat.items() if k != "attention_mask"})
    # Same supervised tokens, same losses: no example attended to another, no loss crossed a boundary.
    assert flat_nll.numel() == padded_nll.numel()
    assert torch.allclose(flat_nll, padded_nll, atol=1e-4)


def test_heldout_loss_same_with_the_fast_head(tiny, monkeypatch):
    encoded = [Encoded(r["input_ids"], r["labels"]) for r in examples()]
    fast = heldout_loss(tiny[1], encoded, 0, batch_size=3, per_row=True)
    monkeypatch.setattr("tunelab.tasks.lm.lm_parts", lambda model: None)
    slow = heldout_loss(tiny[1], encoded, 0, batch_size=3, per_row=True)
    assert fast["eval_loss"] == pytest.approx(slow["eval_loss"], rel=1e-5)
    assert fast["eval_row_tokens"] == slow["eval_row_tokens"]


def train_once(model, tokenizer, tmp_path, speed: SpeedSettings, batch: int, accum: int, steps: int = 1,
               optim: str = "sgd", lr: float = 0.5):
    """Train a copy of `model` and return (its weights, the logged losses)."""
    import copy

    from tunelab.train.trainer import quiet

    model = copy.deepcopy(model)
    prepared = LmPrepared(examples(16), None, [], speed=speed)
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                learning_rate=lr, max_steps=steps, optim=optim, lr_scheduler_type="constant", logging_steps=1,
                save_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0, remove_unused_columns=False,
                disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    trainer = quiet(Sft().trainer(model, tokenizer, prepared, args, []))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, trainer


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("speed", [SpeedSettings(), SpeedSettings(shared_prefix=False), SpeedSettings(padding_free=True),
                                   SpeedSettings(supervised_head=False)],
                         ids=["head-shared-prefix", "head", "flat", "model-loss"])
def test_accumulation_matches_one_big_batch(tiny, tmp_path, speed):
    # Plain SGD moves weights in proportion to the gradient: a loss off by the accumulation factor, or a
    # mean of per-micro-batch means, would show here (Adam's first step would hide a constant factor).
    big, _, _ = train_once(tiny[1], tiny[0], tmp_path, speed, batch=8, accum=1)
    small, _, _ = train_once(tiny[1], tiny[0], tmp_path, speed, batch=4, accum=2)
    start = tiny[1].state_dict()
    assert max_diff(big, start) > 1e-3  # the step moved the weights
    assert max_diff(big, small) < 1e-5 * max(1.0, max_diff(big, start)) * 10


def test_each_shortcut_leaves_the_training_loss_unchanged(tiny, tmp_path):
    base, base_losses, _ = train_once(tiny[1], tiny[0], tmp_path, SpeedSettings(supervised_head=False, padding_free=False),
                                      batch=4, accum=1, steps=3, optim="adamw_torch", lr=1e-3)
    for speed in (SpeedSettings(supervised_head=True), SpeedSettings(supervised_head=True, shared_prefix=False),
                  SpeedSettings(supervised_head=True, padding_free=True)):
        weights, losses, _ = train_once(tiny[1], tiny[0], tmp_path, speed, batch=4, accum=1, steps=3,
                                        optim="adamw_torch", lr=1e-3)
        assert losses == pytest.approx(base_losses, rel=1e-4)
        assert max_diff(weights, base) < 1e-4


def test_flattened_batches_count_every_token_as_input(tiny, tmp_path):
    _, _, padded = train_once(tiny[1], tiny[0], tmp_path, SpeedSettings(), batch=4, accum=1, steps=2)
    _, _, flat = train_once(tiny[1], tiny[0], tmp_path, SpeedSettings(padding_free=True), batch=4, accum=1, steps=2)
    assert padded.state.num_input_tokens_seen == flat.state.num_input_tokens_seen > 0


def test_group_by_length_draws_batches_of_similar_length(tiny, tmp_path):
    from tunelab.train.trainer import quiet

    prepared = LmPrepared(examples(64, seed=1), None, [], speed=SpeedSettings(group_by_length=True))
    args = dict(output_dir=str(tmp_path / "g"), per_device_train_batch_size=8, report_to="none", use_cpu=True,
                remove_unused_columns=False, seed=0, data_seed=0)
    grouped = quiet(Sft().trainer(tiny[1], tiny[0], prepared, args, []))
    prepared.speed = SpeedSettings()
    plain = quiet(Sft().trainer(tiny[1], tiny[0], prepared, args, []))

    def padding(trainer) -> int:
        batches = list(trainer.get_train_dataloader())
        assert sum(b["input_ids"].shape[0] for b in batches) == 64  # every example once
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    assert padding(grouped) < padding(plain) / 2


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    assert cpu_has_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags\t: fpu avx2 avx512f avx512bw\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("tunelab.precision.cpu_has_bf16", lambda: True)
    assert precision_flags("auto")["bf16"] and not precision_flags("fp32")["bf16"]
    monkeypatch.setattr("tunelab.precision.cpu_has_bf16", lambda: False)
    assert not precision_flags("auto")["bf16"]


def test_bf16_autocast_keeps_the_loss_close(tiny):
    batch = Collator(0)(examples())
    parts = lm_parts(tiny[1])
    fp32 = supervised_nll(parts, batch)[0].mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = supervised_nll(parts, batch)[0].mean()
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=0.02)


def test_batched_generation_equals_one_prompt_at_a_time(tiny_model_dir, tokenizer):
    """Left-padded, length-sorted batches give the loop's greedy answers, stop strings included."""
    from transformers import AutoModelForCausalLM

    from tunelab.scoring.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(f"Q{i} " + "A1 " * (i % 5) + "Q2")["input_ids"] for i in range(7)]
    for stop in ((), (" Plant",)):
        looped = [generate(model, tokenizer, [p], 12, stop=stop)[0] for p in prompts]
        assert generate(model, tokenizer, prompts, 12, batch_size=4, stop=stop) == looped
    assert len(set(looped)) > 1  # the prompts lead to different answers, so a mix-up would show


def test_validation_generates_with_the_held_out_stop_strings(monkeypatch):
    from types import SimpleNamespace

    from tunelab.tasks.lm import GenerationCase, HeldOut

    asked = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, stop=()):
        asked["stop"] = stop
        return ["x"] * len(prompts)

    monkeypatch.setattr("tunelab.tasks.lm.generate", fake_generate)
    monkeypatch.setattr("tunelab.tasks.lm.heldout_loss", lambda *a, **k: {"eval_loss": 1.0})
    held = HeldOut([], [GenerationCase([1, 2], "x")], 0, stop=("\n\n",))
    config = SimpleNamespace(eval=SimpleNamespace(max_new_tokens=4, batch_size=2, generation_batch=2))
    result = Sft().validate(None, None, held, config, want=("exact_match",))
    assert asked["stop"] == ("\n\n",) and result["exact_match"] == 1.0


def test_batched_generation_reads_a_shared_prefix_once_and_gives_the_loops_answers(tiny_model_dir, tokenizer):
    import os

    from transformers import AutoModelForCausalLM

    from tunelab.scoring.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = tokenizer("System: answer briefly and truthfully, in one line. Question:")["input_ids"]
    prompts = [head + tokenizer(f" Q{i} " + "A1 " * (i % 5) + "Q2")["input_ids"] for i in range(7)]
    shared, width = len(os.path.commonprefix(prompts)), max(len(p) for p in prompts)
    looped = [generate(model, tokenizer, [p], 12)[0] for p in prompts]
    shapes, hook = decoder_inputs(model)
    batched = generate(model, tokenizer, prompts, 12, batch_size=8)
    hook.remove()
    assert batched == looped and len(set(looped)) > 1
    assert shared >= len(head) and shapes[:3] == [(1, shared), (7, width - shared), (7, 1)]


def test_generation_batches_are_sorted_by_length_within_the_token_budget(monkeypatch):
    from tunelab.scoring.generate import batches

    monkeypatch.setattr("tunelab.scoring.generate.BATCH_TOKENS", 100)
    prompts = [[1] * n for n in (30, 5, 12, 40, 7, 20)]
    # by length: 5, 7, 12 (3 rows of at most 22 tokens with the answer); 20, 30 (2 x 40); 40 (3 x 50 > 100)
    assert batches(prompts, batch_size=3, max_new_tokens=10) == [[1, 4, 2], [5, 0], [3]]


def test_compiled_layers_train_to_the_same_weights(tiny, tmp_path, monkeypatch):
    # Dynamo and AOTAutograd trace the layers as with inductor; inductor's C++ code generation would add
    # minutes here (its speed is measured in benchmarks/RESULTS.md).
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="aot_eager", **kw))
    plain, plain_losses, _ = train_once(tiny[1], tiny[0], tmp_path, SpeedSettings(), batch=4, accum=1, steps=2,
                                        optim="adamw_torch", lr=1e-3)
    compiled, losses, trainer = train_once(tiny[1], tiny[0], tmp_path, SpeedSettings(compile=True), batch=4, accum=1,
                                           steps=2, optim="adamw_torch", lr=1e-3)
    layers = lm_parts(trainer.model)[0].layers
    assert all(layer._compiled_call_impl is not None for layer in layers)  # each layer runs compiled
    assert set(compiled) == set(plain)  # weights keep their names (no _orig_mod prefix)
    assert losses == pytest.approx(plain_losses, rel=1e-4) and max_diff(compiled, plain) < 1e-5
