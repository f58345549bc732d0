"""The few-shot baseline: demos drawn from train with the seed, fitted to the context, scored like the rest."""

from __future__ import annotations

import pytest

from tunelab.tasks.few_shot import draw_demos, few_shot_case
from tunelab.tasks.lm import HeldOut
from tunelab.tasks import get_task

SFT = get_task("sft")
PC_ROWS = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(10)]


def chat(i):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {i}."},
                         {"role": "assistant", "content": f"{i}."}]}


def test_demos_are_seeded_and_distinct():
    assert draw_demos(PC_ROWS, 3, seed=1) == draw_demos(PC_ROWS, 3, seed=1)
    assert draw_demos(PC_ROWS, 3, seed=1) != draw_demos(PC_ROWS, 3, seed=2)
    assert len({d["prompt"] for d in draw_demos(PC_ROWS, 3, seed=1)}) == 3
    assert len(draw_demos(PC_ROWS[:2], 5, seed=1)) == 2


def test_prompt_completion_demos_come_before_the_prompt(tokenizer):
    case = few_shot_case(SFT, {"prompt": "Q9:", "completion": " A9"}, "prompt_completion", tokenizer,
                         PC_ROWS[:2], budget=1000)
    assert case.meta["shots"] == 2
    assert tokenizer.decode(case.prompt_ids, skip_special_tokens=True) == "Q0: A0\n\nQ1: A1\n\nQ9:"
    assert case.reference == " A9"


def test_chat_demos_become_earlier_turns_after_the_system_message(tokenizer):
    case = few_shot_case(SFT, chat(9), "messages", tokenizer, [chat(1), chat(2)], budget=1000)
    text = tokenizer.decode(case.prompt_ids)
    assert text.count("Be brief.") == 1 and text.index("Be brief.") < text.index("Say 1.") < text.index("Say 9.")
    assert text.index("Say 2.") < text.index("Say 9.") and case.reference == "9."


def test_demos_are_dropped_from_the_end_until_the_prompt_fits(tokenizer):
    long_demos = [{"prompt": "word " * 40, "completion": " x"} for _ in range(3)]
    bare = few_shot_case(SFT, PC_ROWS[9], "prompt_completion", tokenizer, [], budget=1000)
    one = few_shot_case(SFT, PC_ROWS[9], "prompt_completion", tokenizer, long_demos[:1], budget=1000)
    fitted = few_shot_case(SFT, PC_ROWS[9], "prompt_completion", tokenizer, long_demos, budget=len(one.prompt_ids) + 5)
    assert fitted.meta["shots"] == 1 and fitted.prompt_ids == one.prompt_ids
    none = few_shot_case(SFT, PC_ROWS[9], "prompt_completion", tokenizer, long_demos, budget=len(bare.prompt_ids))
    assert none.meta["shots"] == 0


def test_run_puts_zero_shot_few_shot_and_tuned_side_by_side(tiny_config, capsys):
    from tunelab.cli_output import print_summary
    from tunelab.train.run import run

    result = run(tiny_config("eval.few_shot_k=2", "eval.forgetting_probe=false", "eval.train_sample=0"))
    s = result.summary
    assert s["zero_shot"] == s["before"]
    assert set(s["few_shot"]) == {"exact_match", "token_f1", "k", "mean_shots"}
    assert s["few_shot"]["k"] == 2 and s["few_shot"]["mean_shots"] == pytest.approx(2.0)
    print_summary(result.run_dir, s)
    header = capsys.readouterr().out.strip().splitlines()[0].split()
    assert header == ["metric", "zero-shot", "2-shot", "tuned", "change"]


def test_few_shot_is_skipped_when_k_is_zero(tiny_config):
    from tunelab.train.run import run

    summary = run(tiny_config("eval.few_shot_k=0", "eval.forgetting_probe=false", "eval.train_sample=0")).summary
    assert summary["few_shot"] is None


def test_held_out_row_order_is_kept(tokenizer):
    from tunelab.tasks.few_shot import few_shot_held_out
    from tunelab.config import load_config

    config = load_config(None, ["data.train=x.jsonl", "eval.few_shot_k=1"])
    base = HeldOut([], [SFT.generation_case(r, "prompt_completion", tokenizer) for r in PC_ROWS[5:]], 0)
    shots = few_shot_held_out(SFT, PC_ROWS[:5], PC_ROWS[5:], "prompt_completion", tokenizer, base, config, 512)
    assert [c.reference for c in shots.cases] == [c.reference for c in base.cases]
