"""Graders (tunelab.graders): each type against hand-computed values or the library it stands on, templates,
calculate_output's arithmetic and its refusals, the python grader's limits, and validation errors that name
the field."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.graders import Options, item_paths, run_grader, validate_grader
from tunelab.graders import score_model as score_model_module
from tunelab.graders import text_similarity

OUT = "{{ sample.output_text }}"


def check(operation: str, reference: str = "{{ item.answer }}", **more) -> dict:
    return {"type": "string_check", "name": "check", "input": OUT, "reference": reference,
            "operation": operation, **more}


def similar(metric: str) -> dict:
    return {"type": "text_similarity", "name": "similar", "input": OUT, "reference": "{{ item.answer }}",
            "evaluation_metric": metric}


def python_grader(source: str) -> dict:
    return {"type": "python", "name": "code", "source": source}


def reward(spec: dict, text: str, item=None, **options) -> float:
    return run_grader(spec, {"output_text": text}, item if item is not None else {}, **options)["reward"]


@pytest.mark.parametrize(("operation", "text", "answer", "expected"), [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("eq", "Paris.", "Paris", 0.0),
    ("ne", "Paris", "Paris", 0.0), ("ne", "paris", "Paris", 1.0),
    ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "It is PARIS.", "paris", 1.0), ("ilike", "It is Lyon.", "paris", 0.0),
])
def test_string_check_each_operation(operation, text, answer, expected):
    assert reward(check(operation), text, {"answer": answer}) == expected


def test_templates_read_nested_items_and_the_samples_json():
    spec = check("eq", reference="{{ item.gold.cities[1] }}", input="{{ sample.output_json.city }}")
    sample = '{"city": "Lyon"}'
    assert reward(spec, sample, {"gold": {"cities": ["Paris", "Lyon"]}}) == 1.0
    assert reward(check("eq", reference="n={{ item.n }}"), "n=3", {"n": 3}) == 1.0  # a number renders as JSON
    assert item_paths(spec) == [("item", ("gold", "cities", 1))]


@pytest.mark.parametrize(("spec", "item", "text"), [
    (check("eq"), {"other": "x"}, "Paris"),                                          # the item has no answer
    (check("eq", input="{{ sample.output_json.city }}"), {"answer": "x"}, "not json"),  # no JSON in the answer
])
def test_a_missing_variable_scores_zero_flagged_invalid_variable(spec, item, text):
    result = run_grader(spec, {"output_text": text}, item)
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["invalid_variable_error"] is True


def test_the_run_response_has_openais_fields():
    result = run_grader(check("like"), {"output_text": "Paris"}, {"answer": "Par"})
    # the fields of the openai SDK's GraderRunResponse, and no other (the SDK's types are the schema)
    assert set(result) == {"reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"}
    assert set(result["metadata"]) == {"name", "type", "errors", "execution_time", "scores", "token_usage",
                                       "sampled_model_name"}
    assert result["metadata"]["name"] == "check" and result["metadata"]["type"] == "string_check"
    assert set(result["metadata"]["errors"]) == {
        "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
        "model_grader_server_error", "model_grader_server_error_details", "other_error",
        "python_grader_runtime_error", "python_grader_runtime_error_details", "python_grader_server_error",
        "python_grader_server_error_type", "sample_parse_error", "truncated_observation_error",
        "unresponsive_reward_error"}
    assert not any(v for v in result["metadata"]["errors"].values())


@pytest.mark.parametrize(("spec", "message"), [
    (check("gt"), 'grader.operation: expected one of eq|ne|like|ilike, got "gt"'),
    ({**check("eq"), "operation": None}, "grader.operation: expected one of eq|ne|like|ilike, got null"),
    ({k: v for k, v in check("eq").items() if k != "reference"}, "grader.reference: required"),
    ({k: v for k, v in check("eq").items() if k != "name"}, "grader.name: required"),
    ({**check("eq"), "refrence": "x"}, 'grader.refrence: unknown field for a string_check grader'),
    (check("eq", reference="{{ answer }}"), "grader.reference: template {{ answer }}: expected a variable under item."),
    (check("eq", reference="{{ item.answer"), "grader.reference: template has a {{ without its closing }}"),
    (check("eq", reference=3), "grader.reference: expected a string"),
    ({**check("eq"), "type": "strng_check"}, 'grader.type: expected one of string_check|text_similarity|score_model|'
                                             'multi|python, got "strng_check" (did you mean "string_check"?)'),
    ("string_check", 'grader: expected a grader object with a type, got "string_check"'),
    (similar("rouge_6"), 'grader.evaluation_metric: expected one of cosine|fuzzy_match|bleu|gleu|meteor|rouge_1|'),
    ({"type": "multi", "name": "m", "graders": {"a": check("eq")}, "calculate_output": "a + b"},
     'grader.calculate_output: unknown name "b"; expected a grader name (a)'),
    ({"type": "multi", "name": "m", "graders": {"a": check("gt")}, "calculate_output": "a"},
     "grader.graders.a.operation: expected one of eq|ne|like|ilike"),
    ({"type": "multi", "name": "m", "graders": {"1a": check("eq")}, "calculate_output": "1"},
     "grader.graders.1a: a grader's key is its name in calculate_output"),
    ({"type": "multi", "name": "m", "calculate_output": "a",
      "graders": {"a": {"type": "multi", "graders": {}, "calculate_output": "1"}}},
     "grader.graders.a.type: expected one of string_check|text_similarity|score_model|python, got \"multi\""),
    (python_grader("def score(sample, item):\n    return 1"), "grader.source: defines no top-level function grade"),
    (python_grader("def grade(sample, item)\n    return 1"), "grader.source: line 1: expected ':'"),
    (python_grader("def grade(sample):\n    return 1"), "grader.source: grade must take two arguments"),
    ({"type": "score_model", "name": "j", "model": "gpt-4o", "input": [{"role": "user", "content": "x"}]},
     'grader.model: "gpt-4o" is not a local judge; expected a causal LM of `tunelab models`'),
    ({"type": "score_model", "name": "j", "model": "tiny-random-llama", "input": [{"role": "robot", "content": "x"}]},
     'grader.input[0].role: expected one of user|assistant|system|developer, got "robot"'),
    ({"type": "score_model", "name": "j", "model": "tiny-random-llama",
      "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     'grader.input[0].content[0].type: expected text (input_text|output_text or a string), got "input_image"'),
    ({"type": "score_model", "name": "j", "model": "tiny-random-llama", "range": [1, 0],
      "input": [{"role": "user", "content": "x"}]}, "grader.range: expected [low, high] with low < high"),
    ({"type": "score_model", "name": "j", "model": "tiny-random-llama", "sampling_params": {"temperature": -1},
      "input": [{"role": "user", "content": "x"}]}, "grader.sampling_params.temperature: expected a number >= 0"),
])
def test_validation_names_the_field_and_what_was_expected(spec, message):
    with pytest.raises(ConfigError) as err:
        validate_grader(spec)
    assert str(err.value).startswith(message), str(err.value)


def test_fuzzy_match_is_the_matched_share_of_both_texts():
    # "abcd" / "abce": 3 matched characters of 8 in all -> 2 * 3 / 8
    assert reward(similar("fuzzy_match"), "abcd", {"answer": "abce"}) == pytest.approx(0.75)
    assert reward(similar("fuzzy_match"), "same", {"answer": "same"}) == 1.0


def test_bleu_gleu_and_rouge_match_their_libraries():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.gleu_score import sentence_gleu
    from rouge_score import rouge_scorer

    text, answer = "The cat sat on the mat .", "The cat is on the mat ."
    hyp, ref = text.split(), answer.split()
    assert reward(similar("bleu"), text, {"answer": answer}) == pytest.approx(
        sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
    assert reward(similar("gleu"), text, {"answer": answer}) == pytest.approx(sentence_gleu([ref], hyp))
    for n in range(1, 6):
        expected = rouge_scorer.RougeScorer([f"rouge{n}"]).score(answer, text)[f"rouge{n}"].fmeasure
        assert reward(similar(f"rouge_{n}"), text, {"answer": answer}) == pytest.approx(expected)
    # by hand: "the cat sat" / "the cat ran" share 2 of 3 words (ROUGE-1 F = 2/3) and 1 of 2 bigrams
    assert reward(similar("rouge_1"), "the cat sat", {"answer": "the cat ran"}) == pytest.approx(2 / 3)
    assert reward(similar("rouge_2"), "the cat sat", {"answer": "the cat ran"}) == pytest.approx(1 / 2)
    assert reward(similar("rouge_l"), "the cat sat", {"answer": "sat the cat"}) == pytest.approx(2 / 3)


def test_meteor_is_refused_without_wordnet_data(monkeypatch):
    monkeypatch.setattr(text_similarity, "has_wordnet", lambda: False)
    with pytest.raises(ConfigError, match="grader.evaluation_metric: meteor needs NLTK's WordNet data"):
        validate_grader(similar("meteor"))


@pytest.mark.skipif(not text_similarity.has_wordnet(), reason="NLTK's WordNet data is not installed")
def test_meteor_matches_nltk_where_wordnet_is_installed():
    from nltk.translate.meteor_score import meteor_score

    text, answer = "The cat sat on the mat .", "The cat is on the mat ."
    assert reward(similar("meteor"), text, {"answer": answer}) == pytest.approx(
        meteor_score([answer.split()], text.split()))


def test_cosine_of_minilm_embeddings():
    same = reward(similar("cosine"), "The cat sat on the mat.", {"answer": "The cat sat on the mat."})
    close = reward(similar("cosine"), "A cat is sitting on a mat.", {"answer": "The cat sat on the mat."})
    unrelated = reward(similar("cosine"), "Quarterly tax filing deadlines.", {"answer": "The cat sat on the mat."})
    assert same == pytest.approx(1.0, abs=1e-5)
    assert unrelated < close < same


def multi(formula: str, **graders) -> dict:
    return {"type": "multi", "name": "combined", "graders": graders or {
        "exact": check("eq"), "near": check("ilike")}, "calculate_output": formula}


@pytest.mark.parametrize(("formula", "expected"), [
    ("0.7 * exact + 0.3 * near", 0.3),           # "PARIS" vs "Paris": not equal, but equal ignoring case
    ("near ^ 2 + 1", 2.0), ("2 ^ 3 ^ 2", 512.0),  # ^ is a power, binding tighter than + and to the right
    ("near ** 2 * 3", 3.0), ("(exact + near) / 2", 0.5), ("-near + 2", 1.0),
    ("min(exact, near, 0.5) + max(exact, 0.25)", 0.25), ("abs(exact - near)", 1.0),
    ("sqrt(4) + exp(0) + log(1) + floor(1.7) + ceil(0.2)", 5.0),
])
def test_multi_combines_sub_rewards_by_its_formula(formula, expected):
    result = run_grader(multi(formula), {"output_text": "PARIS"}, {"answer": "Paris"})
    assert result["reward"] == pytest.approx(expected)
    assert result["sub_rewards"] == {"exact": 0.0, "near": 1.0}


@pytest.mark.parametrize("formula", [
    "__import__('os')", "__import__('os').system('true')", "exact.__class__", "open('/etc/passwd')",
    "'text'", "[exact]", "lambda: 1", "exact if near else 1", "exact < near", "min(*[1])", "max(x=1)",
    "exact; near", "exact | 1", "True", "1j", "near(1)",
])
def test_multi_refuses_anything_but_arithmetic(formula):
    with pytest.raises(ConfigError, match="grader.calculate_output: "):
        validate_grader(multi(formula))


def test_a_formula_without_a_value_scores_zero_flagged():
    result = run_grader(multi("near / exact"), {"output_text": "PARIS"}, {"answer": "Paris"})
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["formula_parse_error"] is True


def test_python_grader_gives_its_value():
    source = "def grade(sample, item):\n    return len(sample['output_text']) / item['n']"
    assert reward(python_grader(source), "abcd", {"n": 8}, allow_python=True) == 0.5
    json_source = "def grade(sample, item):\n    return float(sample['output_json']['score'])"
    assert reward(python_grader(json_source), '{"score": 0.25}', allow_python=True) == 0.25


@pytest.mark.parametrize("spec", [
    python_grader("def grade(sample, item):\n    return 1.0"),
    multi("a", a=python_grader("def grade(sample, item):\n    return 1.0")),
])
def test_python_graders_are_refused_unless_allowed(spec):
    where = "grader.type" if spec["type"] == "python" else "grader.graders.a.type"
    with pytest.raises(ConfigError, match=f"{where}: python graders run the caller's source code and are off"):
        run_grader(spec, {"output_text": "x"}, {})
    validate_grader(spec)  # a valid spec all the same: allowing it is the caller's choice


def limited(**limits) -> dict:
    return {"options": Options(allow_python=True, **limits)}


def test_python_grader_is_killed_at_its_time_limit_with_what_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    source = ("import subprocess, sys\n"
              "def grade(sample, item):\n"
              "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "    open(item['pid_file'], 'w').write(str(child.pid))\n"
              "    while True:\n"
              "        pass\n")
    start = time.perf_counter()
    result = run_grader(python_grader(source), {"output_text": "x"}, {"pid_file": str(pid_file)},
                        **limited(python_seconds=2))
    assert time.perf_counter() - start < 60  # the loop never ends: only the kill returns
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["unresponsive_reward_error"] is True
    started = Path(f"/proc/{pid_file.read_text()}/status")
    deadline = time.monotonic() + 10
    while started.exists() and "State:\tZ" not in started.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not started.exists() or "State:\tZ" in started.read_text()  # gone, or dead and awaiting its reaper


def test_python_grader_memory_is_capped():
    options = limited(python_memory_bytes=512 << 20)
    small = "def grade(sample, item):\n    return len(bytearray(32 << 20)) / (32 << 20)"
    big = "def grade(sample, item):\n    return len(bytearray(1 << 30))"
    assert reward(python_grader(small), "x", **options) == 1.0
    result = run_grader(python_grader(big), {"output_text": "x"}, {}, **options)
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["python_grader_runtime_error"] is True
    assert result["metadata"]["errors"]["python_grader_runtime_error_details"].startswith("MemoryError")


@pytest.mark.parametrize("namespaces", [True, False], ids=["network-namespace", "sockets-refused"])
def test_python_grader_has_no_network_and_no_environment(monkeypatch, namespaces):
    from tunelab.graders import python as python_module

    if not namespaces:  # a kernel that refuses namespaces: Python's sockets refuse to open instead
        monkeypatch.setattr(python_module, "RUNNER", python_module.RUNNER.replace("libc.unshare(", "(lambda f: -1)("))
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        source = ("import socket\ndef grade(sample, item):\n"
                  f"    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n    return 1.0")
        result = run_grader(python_grader(source), {"output_text": "x"}, {}, allow_python=True)
    finally:
        server.close()
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["python_grader_runtime_error"] is True
    monkeypatch.setenv("TUNELAB_API_KEYS", "secret")
    seen = "import os\ndef grade(sample, item):\n    return float('TUNELAB_API_KEYS' in os.environ)"
    assert reward(python_grader(seen), "x", allow_python=True) == 0.0


@pytest.mark.parametrize(("source", "details"), [
    ("def grade(sample, item):\n    return 'high'", "grade() returned 'high', expected a finite number"),
    ("def grade(sample, item):\n    return float('nan')", "grade() returned nan, expected a finite number"),
    ("def grade(sample, item):\n    x = 1\n    return item['missing']", "KeyError: 'missing' (line 3)"),
])
def test_python_grader_errors_score_zero_with_their_details(source, details):
    result = run_grader(python_grader(source), {"output_text": "x"}, {}, allow_python=True)
    errors = result["metadata"]["errors"]
    assert result["reward"] == 0.0 and errors["python_grader_runtime_error"] is True
    assert errors["python_grader_runtime_error_details"] == details


def judge(**more) -> dict:
    return {"type": "score_model", "name": "judge", "model": "tiny-random-llama",
            "input": [{"role": "system", "content": "Rate the answer from 0 to 10."},
                      {"role": "user", "content": [{"type": "input_text", "text": "Question: {{ item.question }}\n"},
                                                   {"type": "output_text", "text": "Answer: " + OUT}]}],
            "range": [0, 10], **more}


@pytest.mark.parametrize(("answer", "expected"), [
    ("7", 7.0), ("Score: 8.5/10", 8.5), ('{"result": 3, "steps": []}', 3.0), ('{"score": 0.5}', 0.5),
    ("-2", -2.0), ("1e1", 10.0), ("no idea", None), ("", None),
])
def test_a_judges_score_is_read_from_its_answer(answer, expected):
    assert score_model_module.parse_score(answer) == expected


def test_score_model_scores_the_judges_answers_inside_its_range(monkeypatch):
    answers = iter(["9", "42", "I cannot say"])
    seen = []

    def fake_judge(spec, chats):
        seen.extend(chats)
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        return iter([next(answers)]), iter([usage])

    monkeypatch.setattr(score_model_module, "ask_judge", fake_judge)
    results = [run_grader(judge(), {"output_text": "Lima"}, {"question": "Capital of Peru?"}) for _ in range(3)]
    assert [r["reward"] for r in results] == [9.0, 0.0, 0.0]  # 42 is outside [0, 10]: the low end, flagged
    assert [r["metadata"]["errors"]["model_grader_parse_error"] for r in results] == [False, True, True]
    assert seen[0] == [{"role": "system", "content": "Rate the answer from 0 to 10."},
                       {"role": "user", "content": "Question: Capital of Peru?\nAnswer: Lima"}]
    assert results[0]["metadata"]["token_usage"] == 6 and results[0]["metadata"]["sampled_model_name"] == \
        "tiny-random-llama"


def test_score_model_runs_a_local_judge_and_leaves_the_random_state_alone(tokenizer):
    import torch

    spec = judge(sampling_params={"max_completions_tokens": 4, "temperature": 1.0, "seed": 3})
    sample, item = {"output_text": "Lima"}, {"question": "Capital of Peru?"}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first, again = run_grader(spec, sample, item), run_grader(spec, sample, item)
    assert torch.equal(torch.get_rng_state(), before)
    chat = [{"role": "system", "content": "Rate the answer from 0 to 10."},
            {"role": "user", "content": "Question: Capital of Peru?\nAnswer: Lima"}]
    prompt = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    usage = first["model_grader_token_usage_per_model"]["tiny-random-llama"]
    assert usage["prompt_tokens"] == len(prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert first == {**again, "metadata": {**again["metadata"], "execution_time": first["metadata"]["execution_time"]}}
    parsed = not first["metadata"]["errors"]["model_grader_parse_error"]
    assert (0 <= first["reward"] <= 10) if parsed else first["reward"] == 0.0
    assert math.isfinite(first["metadata"]["execution_time"])
