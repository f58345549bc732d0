"""Distillation: the loss (0 between identical models, a hand-computed value on a fixture), gradient
accumulation giving the big batch's update, students built from teacher layers, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.data.tokens import IGNORE
from tunelab.errors import ConfigError
from tunelab.inputs import RunData, resolve
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_model, load_pair
from tunelab.models.students import chosen_layers, student_from_teacher
from tunelab.tasks import get_task, task_for_format
from tunelab.tasks.distill import DistillHeldOut, distill_loss, teacher_comparison
from tunelab.train.guards import own_forward_after
from tunelab.train.trainer import common_args

ROWS = [{"prompt": f"Item {i} colour? ", "completion": " ".join(["red", "green", "blue"][: 1 + i % 3]) * (1 + i % 2)}
        for i in range(8)]


def test_kl_is_zero_when_student_is_teacher(tokenizer):
    model = load_model(resolve_model("tiny-random-llama")).eval()
    ids = torch.tensor([tokenizer("The red fox jumps")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert distill_loss(logits, logits.clone(), ids, temperature=2.0, alpha=0.0).item() == pytest.approx(0, abs=1e-6)


def test_loss_matches_a_hand_computed_value():
    # One supervised position (label 0 at position 1, predicted from position 0): student uniform over 3
    # tokens, teacher logits [ln 2, 0, 0]; position 1's logits predict nothing and must not count.
    student = torch.tensor([[[0.0, 0.0, 0.0], [5.0, -5.0, 0.0]]])
    teacher = torch.tensor([[[math.log(2), 0.0, 0.0], [-5.0, 5.0, 0.0]]])
    labels = torch.tensor([[IGNORE, 0]])
    for t in (1.0, 2.0):
        weights = [2 ** (1 / t), 1.0, 1.0]
        p = [w / sum(weights) for w in weights]
        kl = sum(pi * math.log(pi * 3) for pi in p)  # KL(teacher || uniform)
        expected = 0.7 * t * t * kl + 0.3 * math.log(3)
        assert distill_loss(student, teacher, labels, t, alpha=0.3).item() == pytest.approx(expected, rel=1e-5)
    # with the trainer's count of the whole accumulated batch, the sum is divided by that count instead
    assert distill_loss(student, teacher, labels, 1.0, 0.3, num_items=4).item() == \
        pytest.approx(distill_loss(student, teacher, labels, 1.0, 0.3).item() / 4, rel=1e-6)


@pytest.fixture
def distill_setup(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)

    def make(*overrides: str):
        config = load_config(None, ["train.epochs=1", f"data.train={path}", "task=distill", "model=tiny-random-llama",
                                    "distill.teacher=tiny-random-llama", "method=full", "train.max_length=32",
                                    "eval.max_new_tokens=2", "eval.train_sample=0", *overrides])
        task, data = get_task("distill"), load_dataset(path, "auto")
        config = resolve(config, RunData.of(data))  # builds the student of distill.student_layers
        spec = task.model_spec(config, data)
        torch.manual_seed(0)
        tokenizer, model = load_pair(resolve_model(config.model), spec, LoadRules())
        return config, task, tokenizer, model, task.prepare(config, tokenizer, data, data, None)

    return make


def one_step(config, task, tokenizer, model, prepared, out, batch_size, accum, **extra):
    args = {**common_args(config, out), "per_device_train_batch_size": batch_size, "gradient_accumulation_steps": accum,
            "max_steps": 1, "optim": "sgd", "learning_rate": 1.0, "warmup_steps": 0, "save_strategy": "no",
            "lr_scheduler_type": "constant", **extra}
    trainer = task.trainer(model, tokenizer, prepared, args, [])
    with own_forward_after(trainer):  # the next step's trainer prepares the model anew, in its own precision
        trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def reset(model, start):
    with torch.no_grad():
        for p, s in zip(model.parameters(), torch.split(start, [p.numel() for p in model.parameters()])):
            p.copy_(s.view_as(p))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_accumulation_gives_the_big_batch_update(distill_setup, tmp_path, precision):
    # SGD, not Adam: Adam's update hardly changes when the gradient is scaled, which would hide the bug.
    config, task, tokenizer, model, prepared = distill_setup(f"train.precision={precision}")
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    prepared.teacher = load_model(resolve_model("tiny-random-llama")).eval()
    with torch.no_grad():  # a teacher that differs from the student, so the KL term has a gradient
        for p in prepared.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    big = one_step(config, task, tokenizer, model, prepared, tmp_path / "a", 8, 1)
    reset(model, start)
    accumulated = one_step(config, task, tokenizer, model, prepared, tmp_path / "b", 4, 2)
    moved = (big - start).abs().max().item()
    assert moved > 1e-3
    tolerance = 1e-4 * max(moved, 1.0)
    if precision == "bf16":
        # bf16 keeps 8 significant bits, and a batch of 4 rounds other sums than a batch of 8: each of the two
        # updates may be as far from the exact one as the big batch's bf16 update is from its fp32 one.
        reset(model, start)
        exact = one_step(config, task, tokenizer, model, prepared, tmp_path / "c", 8, 1, bf16=False)
        tolerance = 2 * (big - exact).abs().max().item()
        assert tolerance < 0.05 * moved  # bf16's own error is small beside the update (a missed 1/2 is not)
    assert (accumulated - big).abs().max().item() < tolerance


def test_task_auto_still_picks_sft():
    assert task_for_format("prompt_completion") == "sft" and task_for_format("messages") == "sft"


def test_teacher_with_another_tokenizer_is_refused(distill_setup):
    with pytest.raises(ConfigError, match=r'distill.teacher: teacher "tiny-random-bert" \(30522 tokens\) and student '
                                          r'"tiny-random-llama" \(49152 tokens\) have different tokenizers'):
        distill_setup("distill.teacher=tiny-random-bert")


def test_student_keeps_the_chosen_teacher_layers(tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.models.students.cache_dir", lambda: tmp_path)
    teacher_dir = resolve_model("tiny-random-llama")
    teacher = load_model(teacher_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    whole = load_model(student_from_teacher(teacher_dir, [0, 1], LoadRules())).eval()
    assert torch.equal(whole(input_ids=ids).logits, teacher(input_ids=ids).logits)
    half = load_model(student_from_teacher(teacher_dir, chosen_layers(teacher_dir, [1]), LoadRules()))
    assert half.config.num_hidden_layers == 1
    assert torch.equal(half.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    assert chosen_layers(teacher_dir, "every_other") == [0]
    with pytest.raises(ConfigError, match=r"distill.student_layers: .* in 0-1 \(the teacher has 2 layers\), got \[2\]"):
        chosen_layers(teacher_dir, [2])


def test_student_layers_sets_model_to_the_built_student(distill_setup, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.models.students.cache_dir", lambda: tmp_path)
    config, task, tokenizer, model, prepared = distill_setup("distill.student_layers=[1]")
    assert model.config.num_hidden_layers == 1 and config.model.startswith(str(tmp_path / "students"))


def test_gap_closed_and_speedup():
    held = DistillHeldOut([], [], 0, metrics=["exact_match"], teacher={"exact_match": 0.8}, teacher_token_seconds=6e-3,
                          student_before={"exact_match": 0.2})
    out = teacher_comparison(held, {"exact_match": 0.5}, token_seconds=2e-3)
    assert out == {"speedup": pytest.approx(3.0), "gap_closed": pytest.approx(0.5)}
    held.teacher = {"exact_match": 0.2}  # no gap to close: no number rather than a division by zero
    assert "gap_closed" not in teacher_comparison(held, {"exact_match": 0.5}, token_seconds=2e-3)
    assert "speedup" not in teacher_comparison(held, {"exact_match": 0.5}, token_seconds=None)  # nothing generated


def test_speed_is_timed_warm_and_per_generated_token(distill_setup, monkeypatch):
    """The teacher and the student are each timed on a second pass over the same prompts (the first, untimed,
    pays the set-up a first call pays), every answer forced to eval.max_new_tokens tokens, so the two models
    generate alike and the time divides by the tokens generated. It compared the teacher's cold first
    scoring (loss and answers of any length) with the student's warm one: 2.4x for a student equal to its
    teacher, measured on the tiny model."""
    from tunelab.tasks import distill

    config, task, tokenizer, model, prepared = distill_setup("eval.max_new_tokens=5")
    calls, clock = [], iter(range(100))
    real = distill.generate

    def counted(model, tokenizer, prompts, max_new_tokens, **options):
        calls.append((len(prompts), max_new_tokens, options.get("min_new_tokens")))
        return real(model, tokenizer, prompts, max_new_tokens, **options)

    monkeypatch.setattr(distill, "generate", counted)
    monkeypatch.setattr(distill.time, "perf_counter", lambda: 10.0 * next(clock))  # each reading 10 s later
    held = prepared.held_out
    assert distill.seconds_per_token(model, tokenizer, held, config) == pytest.approx(10.0 / (8 * 5))
    assert calls == [(8, 5, 5), (8, 5, 5)]  # warm-up, then the timed pass; 8 prompts of 5 tokens each
    assert set(prepared.info["teacher"]) == {"model", "metrics", "seconds_per_token"}
    assert prepared.info["teacher"]["seconds_per_token"] == held.teacher_token_seconds > 0


def six_layer_teacher(directory):
    """tiny-random-llama's architecture with 6 layers: 2 and 3 add nothing to the residual stream, 1 and 4
    (scaled up) much."""
    from transformers import AutoModelForCausalLM

    from tunelab.models.loading import load_tokenizer

    source = resolve_model("tiny-random-llama")
    config = load_model(source).config
    config.num_hidden_layers = 6
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for i in (2, 3):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
        for i in (1, 4):
            model.model.layers[i].mlp.down_proj.weight.mul_(30)
    model.save_pretrained(directory)
    load_tokenizer(source, LoadRules()).save_pretrained(directory)
    return model.eval()


def test_a_layer_count_drops_the_block_that_costs_least(tmp_path, tokenizer):
    from tunelab.models.students import cheapest_block
    from tunelab.tasks.lm import Encoded, heldout_loss

    teacher = six_layer_teacher(tmp_path / "teacher")
    prompts = [tokenizer(f"Item {i} colour?", return_tensors="pt")["input_ids"] for i in range(6)]
    with torch.no_grad():  # the teacher's own greedy text: the whole teacher predicts it best
        ids = [teacher.generate(p, max_new_tokens=8, do_sample=False)[0].tolist() for p in prompts]
    examples = [Encoded(x, x) for x in ids]
    def loss(model) -> float:
        return heldout_loss(model, examples, tokenizer.pad_token_id)["eval_loss"]

    kept, costs = cheapest_block(teacher, 4, loss)
    assert kept == [0, 1, 4, 5] and sorted(costs) == [1, 2, 3]  # blocks 1-2, 2-3, 3-4: the first and last stay
    assert costs[2] == pytest.approx(loss(teacher), rel=1e-5)
    assert costs[1] > costs[2] and costs[3] > costs[2]
    with pytest.raises(ConfigError, match=r"expected a layer count from 2 to 5 \(the teacher has 6 layers"):
        cheapest_block(teacher, 6, loss)


def test_student_layers_as_a_count_names_the_chosen_layers(distill_setup, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.models.students.cache_dir", lambda: tmp_path)
    six_layer_teacher(tmp_path / "teacher")
    config, task, tokenizer, model, prepared = distill_setup(f"distill.teacher={tmp_path / 'teacher'}",
                                                             "distill.student_layers=4")
    assert config.distill.student_layers == [0, 1, 4, 5] and model.config.num_hidden_layers == 4
