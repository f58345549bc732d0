"""The few-shot baseline: demos drawn from train with the seed, fitted to the context, scored like the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tunelab.tasks.few_shot import PICKERS, draw_demos, few_shot_case
from tunelab.tasks.lm import HeldOut
from tunelab.tasks import get_task

SFT = get_task("sft")
RANDOM = PICKERS["few_shot"]
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


def test_a_prompt_too_long_even_alone_is_scored_with_no_demos_not_dropped(tokenizer):
    """Every column scores the same rows: a prompt over the budget runs with no demos, as zero-shot runs it."""
    from tunelab.config import load_config
    from tunelab.data import Dataset
    from tunelab.tasks.few_shot import few_shot_held_out, shots_shown

    rows = [PC_ROWS[7], {"prompt": "word " * 200 + "Q8:", "completion": " A8"}, PC_ROWS[9]]
    held = Dataset(Path("eval.jsonl"), "prompt_completion", rows, [1, 2, 3])
    base = HeldOut([], SFT.generation_cases(held, tokenizer, 0), 0)
    config = load_config(None, ["data.train=x.jsonl", "eval.few_shot_k=2", "eval.max_new_tokens=16"])
    shots, _ = few_shot_held_out(SFT, RANDOM, PC_ROWS[:5], held, tokenizer, base, config, context_tokens=100)
    assert [c.line for c in shots.cases] == [1, 2, 3]
    assert [c.meta["shots"] for c in shots.cases] == [2, 0, 2] and shots.cases[1].prompt_ids == base.cases[1].prompt_ids
    assert shots_shown(shots, 2) == {"k": 2, "mean_shots": pytest.approx(4 / 3), "fewer_shots": 1}


def test_run_puts_zero_shot_both_few_shots_and_tuned_side_by_side_with_their_costs(tiny_config, capsys):
    from tunelab.cli_output import print_summary
    from tunelab.train.run import run

    result = run(tiny_config("eval.few_shot_k=2", "eval.forgetting_probe=false", "eval.train_sample=0",
                             "eval.cost_rows=2"))
    s = result.summary
    assert s["zero_shot"] == s["before"]
    few, near = s["baselines"]["few_shot"], s["baselines"]["retrieval"]
    assert set(few) == {"label", "metrics", "k", "mean_shots", "fewer_shots", "prompt_budget"}
    assert set(near) == set(few) | {"ranked_by"} and near["ranked_by"] == "minilm-l6 embeddings"
    assert set(few["metrics"]) == set(near["metrics"]) == {"exact_match", "token_f1"}
    assert few["k"] == 2 and few["mean_shots"] == pytest.approx(2.0) and few["label"] == "2-shot"
    assert near["label"] == "2-shot retrieved" and near["mean_shots"] == pytest.approx(2.0)
    assert few["fewer_shots"] == 0 and few["prompt_budget"] == 1024 - 8  # the tiny model's context less the answer
    assert set(s["comparisons"]) == set(s["cost"]) - {"tuned", "tuned_merged"} == {"zero_shot", "few_shot", "retrieval"}
    assert "tuned_merged" in s["cost"] and s["prompting"]["tuned_as"] == "tuned_merged"  # LoRA merges: as served
    for column in s["cost"].values():  # timings are reported, never asserted
        assert column["answers"] == 4 and column["timed_one_at_a_time"] == 2
        assert 0 <= column["generated_tokens"] <= 8 and column["peak_memory_bytes"] > 0
        assert {"seconds_one", "seconds_batched"} <= set(column)
    # The same prompt tokens for zero-shot and tuned; each demo adds its own.
    assert s["cost"]["zero_shot"]["prompt_tokens"] == s["cost"]["tuned"]["prompt_tokens"]
    assert s["cost"]["few_shot"]["prompt_tokens"] > s["cost"]["zero_shot"]["prompt_tokens"]
    assert s["prompting"]["metric"] == "exact_match" and s["prompting"]["train_seconds"] == s["train"]["seconds"]
    print_summary(result.run_dir, s)
    out = capsys.readouterr().out.strip().splitlines()
    assert re.split(r"\s{2,}", out[0]) == ["metric", "zero-shot", "2-shot", "2-shot retrieved", "tuned",
                                          "change [95% CI]"]
    cost_at = out.index("cost per answer (means):") + 1
    assert [re.split(r"\s{2,}", line)[0] for line in out[cost_at + 2:cost_at + 7]] == \
        ["zero-shot", "2-shot", "2-shot retrieved", "tuned", "tuned, merged"]
    verdict = [line[2:] for line in out if line.startswith("- ")]
    assert "95% CI" in verdict[0]
    assert verdict[1].startswith(("Prompting may be enough: ", "Tuning beats the best prompting baseline"))
    report = (result.run_dir / "report.md").read_text()
    assert "## Cost per answer" in report and verdict[1] in report
    assert "<h2>Cost per answer</h2>" in (result.run_dir / "report.html").read_text()


def test_few_shot_is_skipped_when_k_is_zero(tiny_config):
    from tunelab.train.run import run

    summary = run(tiny_config("eval.few_shot_k=0", "eval.forgetting_probe=false", "eval.train_sample=0")).summary
    assert summary["baselines"] == {}


class SkipsSay21(type(SFT)):
    """SFT, except that a row asking for 21 yields no generation case (as a task may for any row)."""

    name = "sft-skips-21"

    def generation_case(self, row, fmt, tokenizer):
        text = row["prompt"] if fmt == "prompt_completion" else row["messages"][-2]["content"]
        return None if "21" in text else SFT.generation_case(row, fmt, tokenizer)


@pytest.fixture
def skips_21(monkeypatch):
    from tunelab.tasks import TASKS

    monkeypatch.setitem(TASKS, SkipsSay21.name, SkipsSay21())
    return TASKS[SkipsSay21.name]


def test_held_out_row_order_is_kept(tokenizer):
    from tunelab.config import load_config
    from tunelab.data import Dataset
    from tunelab.tasks.few_shot import few_shot_held_out

    config = load_config(None, ["data.train=x.jsonl", "eval.few_shot_k=1"])
    held = Dataset(Path("eval.jsonl"), "prompt_completion", PC_ROWS[5:], [6, 7, 8, 9, 10])
    base = HeldOut([], SFT.generation_cases(held, tokenizer, 0), 0)
    shots, _ = few_shot_held_out(SFT, RANDOM, PC_ROWS[:5], held, tokenizer, base, config, 512)
    assert [c.reference for c in shots.cases] == [c.reference for c in base.cases]
    assert [c.line for c in shots.cases] == [6, 7, 8, 9, 10]


def test_few_shot_cases_come_from_the_rows_that_have_cases(tokenizer, skips_21):
    from tunelab.config import load_config
    from tunelab.data import Dataset
    from tunelab.tasks.few_shot import few_shot_held_out

    rows = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in (20, 21, 22, 23)]
    held = Dataset(Path("eval.jsonl"), "prompt_completion", rows, [1, 2, 3, 4])
    base = HeldOut([], skips_21.generation_cases(held, tokenizer, 0), 0)
    shots, _ = few_shot_held_out(skips_21, RANDOM, PC_ROWS, held, tokenizer, base,
                              load_config(None, ["data.train=x.jsonl", "eval.few_shot_k=2"]), 512)
    assert [c.line for c in base.cases] == [c.line for c in shots.cases] == [1, 3, 4]
    assert [c.reference for c in shots.cases] == [" A20", " A22", " A23"]
    assert [tokenizer.decode(c.prompt_ids, skip_special_tokens=True)[-4:] for c in shots.cases] == \
        ["Q20:", "Q22:", "Q23:"]


def test_samples_stay_aligned_when_a_middle_row_has_no_case(tiny_config, skips_21):
    """Eval rows ask for 20..23; 21 yields no case, so 3 samples, each with its own reference and all answers."""
    import json

    from tunelab.train.run import run

    result = run(tiny_config(f"task={skips_21.name}", "eval.few_shot_k=2", "eval.forgetting_probe=false",
                             "eval.train_sample=0"))
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["reference"] for s in samples] == [f"The number is {i}." for i in (20, 22, 23)]
    assert [s["prompt"] for s in samples] == [f"Say the number {i}." for i in (20, 22, 23)]
    assert all(s["few_shot"] is not None and s["after"] is not None for s in samples)
    assert [s["line"] for s in samples] == [1, 3, 4]
    assert result.summary["baselines"]["few_shot"]["mean_shots"] == pytest.approx(2.0)


class RunsOn(torch.nn.Module):
    """A base model shown demos: answers, then carries on into a new demo, whatever stop strings it is given."""

    def __init__(self, tokenizer, text):
        from transformers import LlamaConfig

        super().__init__()
        self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=1)  # sizes its cache
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tail = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.asked = {}

    def generate(self, input_ids, **kwargs):
        self.asked = kwargs
        return torch.cat([input_ids, torch.tensor([self.tail] * len(input_ids))], dim=1)


def held_out_of(rows: list[dict], tokenizer):
    from tunelab.config import load_config
    from tunelab.data import Dataset

    config = load_config(None, ["data.train=x.jsonl", "eval.few_shot_k=2", "model=tiny-random-llama"])
    held = Dataset(Path("eval.jsonl"), "prompt_completion", rows, list(range(1, len(rows) + 1)))
    bare = SFT.held_out(config, tokenizer, held, None)
    bare.encoded = []  # the stub models below only generate
    return config, held, bare


def test_few_shot_answers_are_cut_before_the_next_demo(tokenizer):
    from tunelab.tasks.few_shot import few_shot_held_out
    from tunelab.tasks.lm import score

    config, held, bare = held_out_of([PC_ROWS[9]], tokenizer)
    shots, _ = few_shot_held_out(SFT, RANDOM, PC_ROWS[:5], held, tokenizer, bare, config, 512)
    model = RunsOn(tokenizer, " A9\n\nQ0: A0\n\nQ")
    scores = score(model, tokenizer, shots, config.eval)
    assert [s["output"] for s in scores.samples] == ["A9"]
    assert scores.metrics["exact_match"] == 1.0
    assert "stopping_criteria" in model.asked


def test_zero_shot_answers_end_at_the_formats_natural_end(tokenizer):
    """An untuned model runs on past a one-line answer into the next row: zero-shot stops at the newline
    (it ran to max_new_tokens, and exact match collapsed to 0)."""
    from tunelab.tasks.lm import score

    config, _, bare = held_out_of([PC_ROWS[9]], tokenizer)
    assert bare.stop == ("\n",)
    scores = score(RunsOn(tokenizer, " A9\nQ10: A10\nQ11:"), tokenizer, bare, config.eval)
    assert [s["output"] for s in scores.samples] == ["A9"] and scores.metrics["exact_match"] == 1.0


def test_answers_with_blank_lines_are_not_cut_at_the_demo_separator(tokenizer):
    """A reference holding a blank line: demos are separated by a marked line instead, and the answer ends
    there, so zero-shot, few-shot and the tune all keep the whole answer."""
    from tunelab.tasks.few_shot import few_shot_held_out
    from tunelab.tasks.lm import score

    rows = [{"prompt": f"Q{i}:", "completion": f" line {i}\n\nline {i + 1}"} for i in range(6)]
    config, held, bare = held_out_of(rows[5:], tokenizer)
    assert bare.stop == ("\n\n###\n\n",)
    shots, _ = few_shot_held_out(SFT, RANDOM, rows[:2], held, tokenizer, bare, config, 512)
    prompt = tokenizer.decode(shots.cases[0].prompt_ids, skip_special_tokens=True)
    assert prompt == "Q0: line 0\n\nline 1\n\n###\n\nQ1: line 1\n\nline 2\n\n###\n\nQ5:"
    model = RunsOn(tokenizer, " line 5\n\nline 6\n\n###\n\nQ0: line")
    for held_out in (bare, shots):
        scores = score(model, tokenizer, held_out, config.eval)
        assert [s["output"] for s in scores.samples] == ["line 5\n\nline 6"] and scores.metrics["exact_match"] == 1.0


def test_a_stop_string_is_looked_for_in_the_answer_only(tokenizer):
    """A prompt ending in a newline and an answer opening with one make a blank line across the boundary:
    transformers' stop_strings end the answer there, empty; the answer's own stop check does not."""
    from transformers import StopStringCriteria

    from tunelab.scoring.generate import AnswerStops, cut_at

    prompt = tokenizer("Q9:\n", add_special_tokens=False)["input_ids"]
    opening = torch.tensor([prompt + tokenizer("\n", add_special_tokens=False)["input_ids"]])
    assert bool(StopStringCriteria(tokenizer, ["\n\n"])(opening, None)[0])  # what went wrong
    stops = AnswerStops(tokenizer, ["\n\n"], len(prompt))
    assert not bool(stops(opening, None)[0])
    answered = torch.tensor([prompt + tokenizer("\n A9\n\nQ", add_special_tokens=False)["input_ids"]])
    assert bool(stops(answered, None)[0])
    assert cut_at("\n A9\n\nQ", ["\n\n"]) == "A9" and cut_at("\nA9\nQ", ["\n"]) == "A9"


def test_generation_halts_at_a_stop_string_on_a_real_model(tiny_model_dir, tokenizer):
    """The tiny random model answers "Q1 A1 Q2" with "22222 Plant Plant ...": it stops at " Plant"."""
    from transformers import AutoModelForCausalLM

    from tunelab.scoring.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    new_tokens, original = [], model.generate

    def counted(input_ids, **kwargs):
        out = original(input_ids=input_ids, **kwargs)
        new_tokens.append(out.shape[1] - input_ids.shape[1])
        return out

    model.generate = counted
    prompt = tokenizer("Q1 A1 Q2")["input_ids"]
    free = generate(model, tokenizer, [prompt], 16)[0]
    assert free.startswith("22222 Plant Plant") and new_tokens[-1] == 16
    assert generate(model, tokenizer, [prompt], 16, stop=(" Plant",)) == ["22222"]
    assert new_tokens[-1] < 16
