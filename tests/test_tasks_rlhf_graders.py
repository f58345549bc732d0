"""rlhf.grader: an OpenAI grader as the reward of online RL. Validated with the config, each data row checked for
the item fields its templates read, and in a run on the tiny model every completion graded with its own row."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.errors import ConfigError, DataError
from tunelab.tasks import TASKS

LETTERS = "aeiostnrlhaeiostnrlh"
# OpenAI's reinforcement rows: the user's turn last, the other fields the grader's item
ROWS = [{"messages": [{"role": "user", "content": f"Task {i}: write a word with the letter {c}."}], "letter": c}
        for i, c in enumerate(LETTERS)]
HAS_LETTER = ["rlhf.grader.type=string_check", "rlhf.grader.name=has_letter",
              "rlhf.grader.input={{ sample.output_text }}", "rlhf.grader.reference={{ item.letter }}",
              "rlhf.grader.operation=like"]


def rlhf_config(*overrides: str):
    return load_config(None, ["data.train=x.jsonl", "task=rlhf", *overrides])


def test_the_grader_is_validated_with_the_config_naming_its_field():
    config = rlhf_config(*HAS_LETTER)
    assert config.rlhf.grader["reference"] == "{{ item.letter }}"
    with pytest.raises(ConfigError) as err:
        rlhf_config(*HAS_LETTER, "rlhf.grader.operation=gt")
    assert str(err.value) == 'config: rlhf.grader.operation: expected one of eq|ne|like|ilike, got "gt"'


def test_one_reward_only_and_python_graders_only_when_allowed():
    with pytest.raises(ConfigError, match="set exactly one of rlhf.reward_function, rlhf.reward_model and rlhf.grader"):
        rlhf_config(*HAS_LETTER, "rlhf.reward_function=a:b")
    code = ['rlhf.grader={"type": "python", "name": "code", "source": "def grade(sample, item):\\n    return 1.0"}']
    with pytest.raises(ConfigError, match="config: rlhf.grader.type: python graders run the grader's source code; "
                                          "set rlhf.allow_python_grader=true"):
        rlhf_config(*code)
    assert rlhf_config(*code, "rlhf.allow_python_grader=true").rlhf.grader["type"] == "python"


def test_a_row_without_the_field_a_template_reads_is_refused_before_the_run(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS[:3] + [{"prompt": "Task 3: write a word."}] + ROWS[4:8])
    config = load_config(None, [f"data.train={path}", "task=rlhf", *HAS_LETTER])
    with pytest.raises(DataError, match=f'{path}:4: field "letter": missing; rlhf.grader reads '
                                        r"\{\{ item.letter \}\}"):
        TASKS["rlhf"].check(config, (load_dataset(path),))


def test_a_run_grades_every_completion_with_its_own_row(tmp_path, monkeypatch):
    """On a random model nothing says the reward rises in a few steps; what must hold is that each completion is
    graded with the row its prompt came from, that TRL's reward is the grader's, and that the held-out mean reward
    is the mean of the held-out answers' grades."""
    from tunelab.tasks import rlhf
    from tunelab.train.run import run

    calls = []
    real = rlhf.GraderReward.__call__

    def spy(self, prompts, completions, item=None, **kwargs):
        rewards = real(self, prompts, completions, item=item, **kwargs)
        calls.append((prompts, completions, [json.loads(i) for i in item], rewards))
        return rewards

    monkeypatch.setattr(rlhf.GraderReward, "__call__", spy)
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    result = run(load_config(None, [
        f"data.train={train}", "task=rlhf", "model=tiny-random-llama", "method=lora", f"output_dir={tmp_path / 'run'}",
        "train.batch_size=4", "train.max_steps=2", "train.logging_steps=1", "rlhf.max_completion_length=8",
        "train.precision=fp32", "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
        *HAS_LETTER]))
    letter_of = {row["messages"][0]["content"]: row["letter"] for row in ROWS}
    for prompts, completions, items, rewards in calls:
        for prompt, completion, item, reward in zip(prompts, completions, items, rewards, strict=True):
            assert item == {"letter": letter_of[prompt[-1]["content"]]}  # the row this prompt came from
            assert reward == float(item["letter"] in completion[-1]["content"])
    train_calls = [c for c in calls if len(c[0]) == 4]  # a step's 4 completions; the held-out set has 2 rows
    assert len(train_calls) == 2 and all(len(c[0]) == 2 for c in calls if c not in train_calls)
    assert all(len({p[-1]["content"] for p in c[0]}) == 1 for c in train_calls)  # one prompt's group of 4

    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "reward" in m]
    assert [m["reward"] for m in steps] == pytest.approx([sum(c[3]) / 4 for c in train_calls])
    assert [m["grader_errors"] for m in steps] == [0.0, 0.0]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["after"]["mean_reward"] == pytest.approx(sum(calls[-1][3]) / 2)
