"""The task contract, run over every registered task on tiny random models: its rows become batches,
a few steps lower the loss, and its evaluation returns its declared metrics with values checked on a
fixture whose answer is known."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import write_jsonl
from tests.emulated_device import EmulatedDevice
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.events import Events
from tunelab.inputs import RunData, resolve
from tunelab.methods import get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.tasks import TASKS
from tunelab.train.trainer import common_args

WORDS = ["red", "green", "blue", "gold"]
ROWS = {
    "sft": [{"messages": [{"role": "user", "content": f"Colour {i}?"},
                          {"role": "assistant", "content": WORDS[i % 4]}]} for i in range(24)],
    "causal_lm": [{"text": f"The colour of item {i} is {WORDS[i % 4]}."} for i in range(24)],
    "classify": [{"text": f"item {i} looks {WORDS[i % 4]}", "label": WORDS[i % 4]} for i in range(24)],
    "distill": [{"prompt": f"Colour {i}? ", "completion": WORDS[i % 4]} for i in range(24)],
    "ner": [{"tokens": ["the", WORDS[i % 4], "car", "of", f"Ann{i}"], "tags": ["O", "B-COL", "O", "O", "B-PER"]}
            for i in range(24)],
    "contrastive": [{"anchor": f"what colour is item {i}?", "positive": f"item {i} is {WORDS[i % 4]}"}
                    for i in range(24)],
    "reward": [{"prompt": f"Colour {i}?", "chosen": WORDS[i % 4], "rejected": "none"} for i in range(24)],
    "dpo": [{"prompt": f"Colour {i}?", "chosen": WORDS[i % 4], "rejected": "none"} for i in range(24)],
    "rlhf": [{"prompt": f"Colour of item {i}?"} for i in range(8)],
}
MODEL = {"causal_lm": "tiny-random-llama", "sequence_classifier": "tiny-random-llama",  # its last token is the label
         "token_classifier": "tiny-random-bert", "embedding": "tiny-random-bert"}
# Tasks that train an adapter against the base need an adapter method; rlhf needs a reward; the distilled
# student learns from a copy of itself.
OVERRIDES = {"dpo": ["method=lora"],
             "rlhf": ["method=lora", "rlhf.reward_function=tests.reward_functions:length", "train.batch_size=4",
                      "rlhf.max_completion_length=4"],
             "distill": ["distill.teacher=tiny-random-llama"]}


def test_every_registered_task_has_a_fixture():
    assert set(ROWS) == set(TASKS)


@pytest.fixture(scope="module", params=sorted(TASKS))
def setup(request, tmp_path_factory):
    name = request.param
    task = TASKS[name]
    tmp = tmp_path_factory.mktemp(name)
    path = write_jsonl(tmp / "rows.jsonl", ROWS[name])
    config = load_config(None, [f"data.train={path}", f"task={name}", f"model={MODEL[task.model_kind]}",
                                "train.max_length=96", "eval.max_new_tokens=4", "eval.train_sample=8",
                                "eval.few_shot_k=0", "method=full", "train.learning_rate=1e-3", "train.epochs=1",
                                *OVERRIDES.get(name, [])])
    data = load_dataset(path, "auto")
    config = resolve(config, RunData.of(data))  # labels read from the rows, as a run records them
    spec = task.model_spec(config, data)
    torch.manual_seed(0)
    tokenizer, model = load_pair(resolve_model(config.model), spec, LoadRules())
    if config.method != "full":
        model = get_method(config.method).apply(model, config, spec)
    prepared = task.prepare(config, tokenizer, data, data, Events())
    return SimpleNamespace(task=task, config=config, data=data, tokenizer=tokenizer, model=model, prepared=prepared,
                           tmp=tmp)


def test_rows_become_batches(setup):
    s = setup
    args = {**common_args(s.config, s.tmp / "batches"), "per_device_train_batch_size": 4, "save_strategy": "no"}
    batch = next(iter(s.task.trainer(s.model, s.tokenizer, s.prepared, args, []).get_train_dataloader()))
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)} if isinstance(batch, Mapping) else {}
    ids = [k for k in tensors if k.endswith("input_ids")]  # a pair task's batch holds one set per text column
    if not ids:
        pytest.skip("an online-RL trainer batches raw prompts and generates its own tokens (its loss test covers it)")
    if "position_ids" in tensors and tensors["input_ids"].shape[0] == 1:  # padding-free: four rows end to end
        assert int((tensors["position_ids"] == 0).sum()) == 4
        return
    per_row = 2 if s.data.format == "preference" else 1  # TRL stacks a pair's chosen and rejected sequences
    assert all(tensors[k].shape[0] == 4 * per_row for k in ids), {k: tuple(v.shape) for k, v in tensors.items()}
    assert all(tensors[k.replace("input_ids", "attention_mask")].shape == tensors[k].shape for k in ids)
    assert len(s.prepared.train) == len(ROWS[s.task.name])


def test_scoring_runs_with_the_model_on_an_accelerator(setup):
    """Every tensor the task's scoring makes follows the model's device: held-out loss, generation, rewards,
    labels, embeddings and the baselines run with the model on an emulated accelerator (tests/emulated_device.py;
    the CUDA tests skip here) and give the numbers they give on the CPU. Runs before any training step."""
    s = setup
    on_cpu = s.task.evaluate(s.model, s.tokenizer, s.prepared.held_out, s.config).metrics
    with EmulatedDevice() as device:
        device.place(s.model)
        elsewhere = s.task.evaluate(s.model, s.tokenizer, s.prepared.held_out, s.config).metrics
        s.task.validate(s.model, s.tokenizer, s.prepared.held_out, s.config, tuple(s.task.validation_metrics(s.config)))
        s.task.baselines(s.model, s.tokenizer, s.data, s.data, s.prepared, s.config, Events())
    timings = ("speedup",)  # distill: wall-clock ratios differ from call to call
    assert {k: v for k, v in elsewhere.items() if k not in timings} == \
        pytest.approx({k: v for k, v in on_cpu.items() if k not in timings}, rel=1e-5)


def test_a_few_steps_lower_the_loss(setup):
    s = setup
    has_loss = "eval_loss" in s.task.validation_metrics(s.config)
    before = s.task.validate(s.model, s.tokenizer, s.prepared.held_out, s.config).get("eval_loss")
    weights = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    args = {**common_args(s.config, s.tmp / "checkpoints"), "max_steps": 12 if has_loss else 2, "save_strategy": "no",
            "learning_rate": 3e-3, "warmup_steps": 0}
    s.task.trainer(s.model, s.tokenizer, s.prepared, args, []).train()
    if not has_loss:  # online RL has no held-out loss: its steps must at least move the trained weights
        assert any(not torch.equal(p, weights[n]) for n, p in s.model.named_parameters() if n in weights)
        return
    after = s.task.validate(s.model, s.tokenizer, s.prepared.held_out, s.config)["eval_loss"]
    # measured: sft 10.84 -> 8.81, reward 0.73 -> 0.02; dpo 0.693 -> 0.635 (a LoRA adapter, 12 steps)
    assert after < (0.95 if s.task.name == "dpo" else 0.9) * before


def test_evaluation_returns_the_declared_metrics_for_every_row(setup):
    s = setup
    scores = s.task.evaluate(s.model, s.tokenizer, s.prepared.held_out, s.config)
    assert set(s.task.metric_names(s.config)) <= set(scores.metrics)
    assert set(s.task.validation_metrics(s.config)) <= set(scores.metrics)
    if scores.samples:
        assert sorted(x["line"] for x in scores.samples) == s.data.lines


def test_evaluation_in_bf16_returns_finite_metrics_for_every_row(setup):
    """Every task scores under the bf16 autocast a run with train.precision=bf16 (or auto on a CPU with native
    bf16) evaluates in: generation caches, pooled embeddings and similarities included."""
    from tunelab.precision import autocast

    s = setup
    with autocast("bf16"):
        scores = s.task.evaluate(s.model, s.tokenizer, s.prepared.held_out, s.config)
    assert set(s.task.metric_names(s.config)) <= set(scores.metrics)
    assert all(math.isfinite(v) for v in scores.metrics.values() if isinstance(v, float)), scores.metrics
    if scores.samples:
        assert sorted(x["line"] for x in scores.samples) == s.data.lines


class Uniform(torch.nn.Module):
    """Every position gets the same logits (an encoder: the same hidden state): the loss is exactly
    log(classes); argmax is class 0."""

    def __init__(self, classes: int, config: object):
        super().__init__()
        self.classes, self.config = classes, config
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        shape = (*input_ids.shape, self.classes) if self.config.kind == "lm" else (input_ids.shape[0], self.classes)
        if self.config.kind == "encoder":
            return SimpleNamespace(last_hidden_state=torch.ones(*input_ids.shape, 4) + 0 * self.anchor)
        logits = torch.zeros(shape)
        if self.config.kind == "cls":
            logits[:, 0] = 1e-6  # ties broken towards the first label
        return SimpleNamespace(logits=logits + 0 * self.anchor)


def test_known_answer_uniform_model(setup):
    s = setup
    config = s.config.model_copy(deep=True)
    config.eval.generate = False
    if s.task.name in ("reward", "dpo"):  # equal rewards (a uniform reward head; a policy equal to its reference)
        kind = "cls" if s.task.name == "reward" else "lm"
        stub = Uniform(1 if kind == "cls" else len(s.tokenizer), SimpleNamespace(kind=kind))
        metrics = s.task.evaluate(stub, s.tokenizer, s.prepared.held_out, config).metrics
        assert metrics["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)
        assert (metrics["pairwise_accuracy"], metrics["reward_margin"]) == (0.5, 0.0)  # a tie counts one half
        return
    if s.task.name == "rlhf":  # the reward function returns each greedy answer's length
        scores = s.task.evaluate(s.model, s.tokenizer, s.prepared.held_out, config)
        lengths = [len(x["output"]) for x in scores.samples]
        assert len(lengths) == len(ROWS["rlhf"]) and scores.metrics["mean_reward"] == pytest.approx(sum(lengths) / 8)
        return
    if s.task.model_kind == "causal_lm":
        stub = Uniform(len(s.tokenizer), SimpleNamespace(kind="lm"))
        metrics = s.task.evaluate(stub, s.tokenizer, s.prepared.held_out, config).metrics
        assert metrics["eval_loss"] == pytest.approx(math.log(len(s.tokenizer)), rel=1e-6)
        assert metrics["perplexity"] == pytest.approx(len(s.tokenizer), rel=1e-4)
        return
    if s.task.model_kind == "token_classifier":  # every word predicted O: no entity found
        stub = Uniform(len(config.ner.labels), SimpleNamespace(kind="lm", id2label=dict(enumerate(config.ner.labels))))
        metrics = s.task.evaluate(stub, s.tokenizer, s.prepared.held_out, config).metrics
        assert metrics["eval_loss"] == pytest.approx(math.log(len(config.ner.labels)), rel=1e-5)
        assert metrics["entity_f1"] == metrics["entity_recall"] == 0.0
        return
    if s.task.model_kind == "embedding":  # every text embeds alike: each positive ties with the whole corpus
        corpus = len(ROWS["contrastive"])
        metrics = s.task.evaluate(Uniform(0, SimpleNamespace(kind="encoder")), s.tokenizer, s.prepared.held_out,
                                  config).metrics
        # the loss's corpus: the texts of as many rows as the train sample holds (eval.train_sample=8)
        assert metrics["eval_loss"] == pytest.approx(math.log(8), rel=1e-5)
        assert metrics["mrr"] == pytest.approx(1 / corpus) and metrics["recall_at_10"] == 0.0
        return
    labels = config.classify.labels
    stub = Uniform(len(labels), SimpleNamespace(kind="cls", id2label=dict(enumerate(labels))))
    metrics = s.task.evaluate(stub, s.tokenizer, s.prepared.held_out, config).metrics
    assert metrics["eval_loss"] == pytest.approx(math.log(len(labels)), rel=1e-5)
    first = sum(str(r["label"]) == labels[0] for r in ROWS["classify"]) / len(ROWS["classify"])
    assert metrics["accuracy"] == pytest.approx(first)  # 6 of 24 rows carry the first label: 0.25
    assert metrics["macro_f1"] == pytest.approx(2 * first / (1 + first) / len(labels))
