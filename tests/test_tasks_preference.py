"""reward, dpo and rlhf on tiny models: metrics on fixtures with known answers, the DPO reference being the
adapter switched off, TRL configs set deliberately, and bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import write_jsonl
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
from tunelab.tasks.lm import heldout_loss
from tunelab.tasks.preference import trl_config
from tunelab.tasks.rlhf import load_reward_function
from tunelab.inputs import choose_task
from tunelab.train.trainer import common_args

PAIRS = [{"prompt": f"Colour {i}?", "chosen": "red" * (1 + i % 3), "rejected": "no"} for i in range(6)]


def test_pairwise_scores_known_answer():
    got = pairwise_scores([1.0, 2.0, 3.0], [0.0, 2.0, 5.0])
    assert got["pairwise_accuracy"] == pytest.approx(1 / 3)  # the tie (2, 2) is not a win
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


def test_reward_metrics_from_hand_set_rewards(tmp_path):
    s = prepared_for("reward", tmp_path, PAIRS)
    metrics = s.task.evaluate(LengthReward(), s.tokenizer, s.prepared.held_out, s.config).metrics
    held = s.prepared.held_out
    # "red" and "no" are one token each: chosen is 0, 1 or 2 tokens longer; the ties are not wins
    assert [len(c) - len(r) for c, r in zip(held.chosen, held.rejected)] == [0, 1, 2, 0, 1, 2]
    assert metrics["pairwise_accuracy"] == pytest.approx(4 / 6)
    assert metrics["reward_margin"] == pytest.approx(1.0)


def test_dpo_reference_is_the_adapter_switched_off(tmp_path):
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora", "dpo.beta=0.5")
    lora = get_method("lora")
    model = lora.apply(s.model, s.config, s.spec)
    held = s.prepared.held_out
    fresh = implicit_rewards(model, held, 4)
    assert fresh["reward_margin"] == 0.0 and fresh["eval_loss"] == pytest.approx(0.6931471805599453)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    policy = [answer_logps(model, e, held.pad_id, 4) for e in (held.chosen, held.rejected)]
    with lora.disabled(model):
        base = [answer_logps(model, e, held.pad_id, 4) for e in (held.chosen, held.rejected)]
    rewards = [[0.5 * (p - b) for p, b in zip(ps, bs)] for ps, bs in zip(policy, base)]
    expected = pairwise_scores(*rewards)
    got = implicit_rewards(model, held, 4)
    assert got["reward_margin"] == pytest.approx(expected["reward_margin"], rel=1e-5) and expected["reward_margin"] != 0
    assert got["pairwise_accuracy"] == pytest.approx(expected["pairwise_accuracy"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dpo_trainer_keeps_no_adapter_copy_and_trl_flags_are_ours(tmp_path, precision):
    s = prepared_for("dpo", tmp_path, PAIRS, "method=lora", f"train.precision={precision}")
    model = get_method("lora").apply(s.model, s.config, s.spec)
    trainer = s.task.trainer(model, s.tokenizer, s.prepared, common_args(s.config, tmp_path / "ck"), [])
    assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy removed: the reference is the base
    # TRL defaults both on; they follow train.gradient_checkpointing and train.precision instead
    assert (trainer.args.gradient_checkpointing, trainer.args.bf16) == (False, precision == "bf16")
    with pytest.raises(ConfigError, match="method=lora"):
        s.task.trainer(s.model, s.tokenizer, s.prepared, common_args(s.config, tmp_path / "ck"), [])


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
