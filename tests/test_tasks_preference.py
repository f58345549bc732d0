"""reward, dpo and rlhf on tiny models: metrics on fixtures with known answers, the DPO reference being the
adapter switched off, TRL configs set deliberately, and bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import EXAMPLES, write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.data.formats import validate_row
from tunelab.data.rows import Row
from tunelab.errors import ConfigError, DataError
from tunelab.events import Events
from tunelab.methods import get_method
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.scoring.metrics import pairwise_scores
from tunelab.tasks import TASKS
from tunelab.tasks.dpo import answer_logps, implicit_rewards
from tunelab.tasks.lm import IGNORE, heldout_loss
from tunelab.tasks.preference import trl_config
from tunelab.tasks.rlhf import load_reward_function
from tunelab.inputs import choose_task
from tunelab.train.trainer import common_args

PAIRS = [{"prompt": f"Colour {i}?", "chosen": "red" * (1 + i % 3), "rejected": "no"} for i in range(6)]


def test_pairwise_scores_known_answer():
    got = pairwise_scores([1.0, 2.0, 3.0], [0.0, 2.0, 5.0])
    assert got["pairwise_accuracy"] == pytest.approx(1.5 / 3)  # the tie (2, 2) counts one half
    assert got["reward_margin"] == pytest.approx((1 + 0 - 2) / 3)


class LengthReward(torch.nn.Module):
    """A reward head whose output is the sequence's length: hand-set rewards with a known answer."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=attention_mask.sum(1, keepdim=True).float() + 0 * self.anchor)


def prepared_for(task_name: str, tmp_path: Path, rows: list, *overrides: str):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = load_config(None, ["train.epochs=1", f"data.train={path}", f"task={task_name}", "model=tiny-random-llama",
                                "train.max_length=64", "eval.generate=false", *overrides])
    data = load_dataset(path, "auto")
    task = TASKS[task_name]
    spec = task.model_spec(config, data)
    tokenizer, model = load_pair(resolve_model(config.model), spec, LoadRules())
    return SimpleNamespace(task=task, config=config, data=data, spec=spec, tokenizer=tokenizer, model=model,
                           prepared=task.prepare(config, tokenizer, data, data, Events()))


CHAT_PAIRS = [{"prompt": [{"role": "user", "content": f"Colour {i}?"}],
               "chosen": [{"role": "assistant", "content": "red" * (1 + i % 3)}],
               "rejected": [{"role": "assistant", "content": "no"}]} for i in range(6)]


@pytest.mark.parametrize("rows", [PAIRS, CHAT_PAIRS], ids=["strings", "chats"])
def test_held_out_pairs_are_the_sequences_trl_trains_on(tmp_path, rows):
    """Scored as trained: the held-out sequences equal TRL's own tokenization of the same rows (DPOTrainer's
    prompt + answer with the loss on the answer, RewardTrainer's whole sequence), and an answer ends once: a
    chat answer at the template's end of turn, a string answer at one EOS."""
    (tmp_path / "dpo").mkdir(), (tmp_path / "reward").mkdir()
    dpo = prepared_for("dpo", tmp_path / "dpo", rows, "method=lora", "train.precision=fp32")
    model = get_method("lora").apply(dpo.model, dpo.config, dpo.spec)
    trained = dpo.task.trainer(model, dpo.tokenizer, dpo.prepared, common_args(dpo.config, tmp_path / "ck"), [])
    held, eos = dpo.prepared.held_out, dpo.tokenizer.eos_token_id
    prompt_lengths = [len(example["prompt_ids"]) for example in trained.train_dataset]
    for example, chosen, rejected in zip(trained.train_dataset, held.chosen, held.rejected):
        prompt = [IGNORE] * len(example["prompt_ids"])
        assert (chosen.input_ids, chosen.labels) == (example["prompt_ids"] + example["chosen_ids"],
                                                     prompt + example["chosen_ids"])
        assert (rejected.input_ids, rejected.labels) == (example["prompt_ids"] + example["rejected_ids"],
                                                         prompt + example["rejected_ids"])
        assert [t for t in chosen.labels if t != IGNORE].count(eos) == 1
    reward = prepared_for("reward", tmp_path / "reward", rows, "train.precision=fp32")
    trained = reward.task.trainer(reward.model, reward.tokenizer, reward.prepared,
                                  common_args(reward.config, tmp_path / "ck2"), [])
    assert [e["chosen_ids"] for e in trained.train_dataset] == reward.prepared.held_out.chosen
    assert [e["rejected_ids"] for e in trained.train_dataset] == reward.prepared.held_out.rejected
    assert all(ids[start:].count(eos) == 1 for ids, start in zip(reward.prepared.held_out.chosen, prompt_lengths))


def test_reward_metrics_from_hand_set_rewards(tmp_path):
    s = prepared_for("reward", tmp_path, PAIRS)
    metrics = s.task.evaluate(LengthReward(), s.tokenizer, s.prepared.held_out, s.config).metrics
    held = s.prepared.held_out
    # "red" and "no" are one token each: chosen is 0, 1 or 2 tokens longer; the two ties count one half each
    assert [len(c) - len(r) for c, r in zip(held.chosen, held.rejected)] == [0, 1, 2, 0, 1, 2]
    assert metrics["pairwise_accuracy"] == pytest.approx(5 / 6)
    assert metrics["reward_margin"] == pytest.approx(1.0)


def logp_by_hand(model: torch.nn.Module, example) -> float:
    """log p(answer | prompt) from one plain forward of the whole sequence, in float64: each position's
    log-softmax read at the next token, summed over the supervised tokens (no tunelab scoring code)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0].double()
    targets = torch.tensor(example.labels[1:])
    keep = targets != IGNORE
    return float(torch.log_softmax(logits[:-1], -1)[keep].gather(1, targets[keep][:, None]).sum())


def test_dpo_reference_is_the_adapter_switched_off(tmp_path):
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora", "dpo.beta=0.5", "train.precision=fp32")
    lora = get_method("lora")
    model = lora.apply(s.model, s.config, s.spec)
    held = s.prepared.held_out
    fresh = implicit_rewards(model, held, 4)
    assert fresh == pytest.approx({"eval_loss": math.log(2), "pairwise_accuracy": 0.5, "reward_margin": 0.0})
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    policy = [[logp_by_hand(model, e) for e in side] for side in (held.chosen, held.rejected)]
    with lora.disabled(model):
        base = [[logp_by_hand(model, e) for e in side] for side in (held.chosen, held.rejected)]
    base_model = load_pair(resolve_model("tiny-random-llama"), s.spec, LoadRules())[1]
    assert base[0][0] == pytest.approx(logp_by_hand(base_model, held.chosen[0]), rel=1e-6)  # switched off = base
    chosen, rejected = ([0.5 * (p - b) for p, b in zip(ps, bs)] for ps, bs in zip(policy, base))
    margins = [c - r for c, r in zip(chosen, rejected)]
    got = implicit_rewards(model, held, 4)
    assert got["reward_margin"] == pytest.approx(sum(margins) / 6, rel=1e-5) and abs(got["reward_margin"]) > 1e-3
    assert got["pairwise_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 6)
    assert got["eval_loss"] == pytest.approx(sum(math.log1p(math.exp(-m)) for m in margins) / 6, rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dpo_trainer_keeps_no_adapter_copy_and_trl_flags_are_ours(tmp_path, precision):
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora", f"train.precision={precision}")
    model = get_method("lora").apply(s.model, s.config, s.spec)
    trainer = s.task.trainer(model, s.tokenizer, s.prepared, common_args(s.config, tmp_path / "ck"), [])
    assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy removed: the reference is the base
    # TRL defaults both on; they follow train.gradient_checkpointing and train.precision instead
    assert (trainer.args.gradient_checkpointing, trainer.args.bf16) == (False, precision == "bf16")
    # a method without a switched-off view is refused before any model loads (tests/test_run_lifecycle.py)


def first_dpo_loss(tmp_path: Path, sft_weight: float) -> float:
    """TRL's training loss on the whole fixture (one batch) with a fresh adapter: the policy is the reference."""
    tmp_path.mkdir()
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora", "train.batch_size=6", f"dpo.sft_weight={sft_weight}")
    model = get_method("lora").apply(s.model, s.config, s.spec)
    trainer = s.task.trainer(model, s.tokenizer, s.prepared, common_args(s.config, tmp_path / "ck"), [])
    with torch.no_grad():
        return float(trainer.compute_loss(model, next(iter(trainer.get_train_dataloader()))))


def test_dpo_sft_weight_adds_the_chosen_answers_cross_entropy(tmp_path):
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora")
    chosen_nll = heldout_loss(s.model, s.prepared.held_out.chosen, s.prepared.held_out.pad_id, 6)["eval_loss"]
    plain, half = first_dpo_loss(tmp_path / "a", 0.0), first_dpo_loss(tmp_path / "b", 0.5)
    assert plain == pytest.approx(math.log(2))  # DPO alone: the fresh policy is its own reference
    assert half == pytest.approx(math.log(2) + 0.5 * chosen_nll, rel=1e-5) and chosen_nll > 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trl_config_follows_tunelab_arguments(tmp_path, precision):
    from trl import RewardConfig

    config = load_config(None, ["train.epochs=1", "data.train=x.jsonl", "train.gradient_checkpointing=true",
                                f"train.precision={precision}"])
    args = trl_config(RewardConfig, common_args(config, tmp_path))
    assert args.gradient_checkpointing is True and args.bf16 is (precision == "bf16")


def test_dpo_refuses_a_method_without_a_switched_off_view(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", PAIRS)
    config = load_config(None, [f"data.train={path}", "task=dpo", "method=full"])
    with pytest.raises(ConfigError, match='method "full" has none'):
        TASKS["dpo"].check(config)


def test_dpo_on_prompt_completion_rows_names_the_schema_with_an_example(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
    config = load_config(None, [f"data.train={path}", "task=dpo", "method=lora"])
    with pytest.raises(DataError) as err:
        choose_task(config, load_dataset(path, "auto"))
    message = str(err.value)
    assert 'rows are "prompt_completion"' in message and 'expects preference (prompt+chosen+rejected), e.g. {' in message
    example = json.loads(message.split("e.g. ", 1)[1].split("; set task=", 1)[0])
    assert validate_row(Row(1, example), "preference") == []


@pytest.mark.parametrize("function, expected", [
    ("picky", r'"tests.reward_functions:picky" raised ValueError: cannot score item 7 \(on prompt .Colour 7\?.\)'),
    ("words", r'"tests.reward_functions:words" returned .many., expected a finite number \(on prompt .Colour 0\?.\)'),
    ("short", r'"tests.reward_functions:short" must return a list of 9 numbers'),
])
def test_bad_reward_function_names_itself_and_the_prompt(function, expected):
    reward = load_reward_function(f"tests.reward_functions:{function}")
    with pytest.raises(DataError, match=expected):
        reward(prompts=[f"Colour {i}?" for i in range(9)], completions=["x"] * 9)


def test_reward_function_that_cannot_load_is_a_config_error():
    with pytest.raises(ConfigError, match='rlhf.reward_function: cannot load "tests.reward_functions:nope"'):
        load_reward_function("tests.reward_functions:nope")


def test_the_rlhf_examples_reward_file_is_found_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(EXAMPLES / "rlhf.yaml")
    assert config.rlhf.reward_function == f"{EXAMPLES / 'json_reward.py'}:json_object"
    reward = load_reward_function(config.rlhf.reward_function)
    assert reward(prompts=["a", "b"], completions=['{"name": "Ann", "city": "Oslo"}', "no"]) == [1.0, 0.0]
    on_command_line = load_config(EXAMPLES / "rlhf.yaml", ["rlhf.reward_function=mine.py:score"])
    assert on_command_line.rlhf.reward_function == "mine.py:score"  # relative to the working directory
    (tmp_path / "mine.py").write_text("def score(prompts, completions, **kwargs):\n    return [0.5] * len(completions)\n")
    assert load_reward_function("mine.py:score")(prompts=["a"], completions=["b"]) == [0.5]
    with pytest.raises(ConfigError, match=r'cannot load "gone.py:score": .*gone.py: file not found'):
        load_reward_function("gone.py:score")


@pytest.mark.parametrize("overrides, expected", [
    ([], "set exactly one of rlhf.reward_function, rlhf.reward_model and rlhf.grader"),
    (["rlhf.reward_function=a:b", "rlhf.reward_model=runs/r"], "set exactly one"),
])
def test_rlhf_needs_exactly_one_reward(overrides, expected):
    with pytest.raises(Exception, match=expected):
        load_config(None, ["data.train=x.jsonl", "task=rlhf", *overrides])


def test_rlhf_batch_holds_whole_groups():
    config = load_config(None, ["data.train=x.jsonl", "task=rlhf", "rlhf.reward_function=a:b", "train.batch_size=6"])
    with pytest.raises(ConfigError, match="train.batch_size: 6 must be a multiple of rlhf.num_generations"):
        TASKS["rlhf"].check(config)


def test_rlhf_scores_with_a_reward_run_as_the_reward_task_does_and_trains_by_rloo(tmp_path):
    from tunelab.tasks.reward import REWARD, load_reward_run, rewards
    from tunelab.train.run import run

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Colour {i}?", "chosen": "red", "rejected": "no"}
                                                   for i in range(12)])
    reward_run = run(load_config(None, [f"data.train={pairs}", "task=reward", "model=tiny-random-llama",
                                        "method=lora", f"output_dir={tmp_path / 'rm'}", "train.max_steps=2",
                                        "train.batch_size=4", "train.max_length=64"])).run_dir
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Colour 3?", "chosen": "blue", "rejected": "no"}])
    s = prepared_for("rlhf", tmp_path, [{"prompt": f"Colour {i}?"} for i in range(4)], "method=lora",
                     f"rlhf.reward_model={reward_run}", "rlhf.algorithm=rloo", "train.batch_size=4",
                     "rlhf.max_completion_length=4", "rlhf.num_generations=2")
    tokenizer, model = load_reward_run(reward_run)
    held = REWARD.held_out(s.config, tokenizer, load_dataset(one, "auto"), None)
    expected = rewards(model, held.chosen, tokenizer.pad_token_id, 4)
    assert s.prepared.held_out.reward(prompts=["Colour 3?"], completions=["blue"]) == pytest.approx(expected)

    policy = get_method("lora").apply(s.model, s.config, s.spec)
    args = {**common_args(s.config, tmp_path / "ck"), "max_steps": 1, "save_strategy": "no"}
    trainer = s.task.trainer(policy, s.tokenizer, s.prepared, args, [])
    assert type(trainer).__name__ == "RLOOTrainer" and trainer.args.num_generations == 2
    trainer.train()
    assert trainer.state.global_step == 1


def test_rlhf_refuses_a_run_of_another_task_as_reward_model(tmp_path):
    from tunelab.tasks.reward import load_reward_run

    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("task: sft\nmodel: tiny-random-llama\nmethod: lora\n")
    with pytest.raises(ConfigError, match='is a run of task "sft"; expected "reward"'):
        load_reward_run(tmp_path)
