"""`tunelab data synth`: generated rows are validated, deduplicated, leak-checked and carry provenance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count

import pytest

from tests.conftest import EXAMPLES, write_jsonl
from tunelab.cli import main
from tunelab.data import load_dataset
from tunelab.data.dedup import find_duplicates
from tunelab.data.formats import row_text
from tunelab.data.synth import SynthOptions, synthesize
from tunelab.data.teachers import HttpTeacher, LocalTeacher
from tunelab.errors import ModelError

SEEDS = [{"prompt": f"Question: what is {a} plus {b}?\nAnswer:", "completion": f" {a + b}"}
         for a, b in [(2, 3), (10, 7), (41, 1), (6, 6), (13, 20)]]


class ScriptedTeacher:
    """Replies from a script, in order, so the pipeline's filtering can be checked exactly."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = iter(replies)
        self.asked = []

    def chat(self, conversations, max_new_tokens, temperature, seed):
        self.asked.extend(conversations)
        return [next(self.replies) for _ in conversations]


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_copies_empties_and_leaks_are_dropped(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Question: how far is the moon from the earth today?",
                                                  "completion": " far"}])
    # round 1 asks for n + 2 = 5 inputs, then 5 answers
    inputs = ["Example 6: Question: what is 2 plus 3?\nAnswer:",   # copy of seed line 1 -> duplicate
              "Question: how many legs does a cat have, usually?",
              "   ",                                               # empty prompt is allowed, empty answer is not
              "Question: how many legs does a cat have, usually?",  # repeats the draft above -> duplicate
              "Question: how far is the moon from the earth today?"]  # repeats held-out -> leak
    answers = [" 5", "Four.", "", "Four.", "far"]
    teacher = ScriptedTeacher(inputs + answers)
    out = tmp_path / "out.jsonl"
    result = synthesize(seeds, teacher, out, SynthOptions(n=3, max_rounds=1), held_out=held)
    assert (result.kept, result.dropped_invalid, result.dropped_duplicates, result.dropped_leaks) == (1, 1, 2, 1)
    assert read_jsonl(out) == [{"prompt": "Question: how many legs does a cat have, usually?", "completion": " Four."}]
    prov = read_jsonl(tmp_path / "out.provenance.jsonl")
    assert prov[0]["line"] == 1 and prov[0]["teacher"] == "scripted" and len(prov[0]["seed_lines"]) == 3
    assert set(prov[0]["seed_lines"]) <= {1, 2, 3, 4, 5}
    ask, answer = prov[0]["prompts"]
    assert "Write one new example" in ask[0]["content"]
    assert answer[-1] == {"role": "user", "content": "Question: how many legs does a cat have, usually?"}
    assert [m["role"] for m in answer] == ["user", "assistant"] * 3 + ["user"]


def test_classification_keeps_the_requested_label(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"text": f"review number {i} of a {w} film", "label": w}
                                                    for i, w in enumerate(["good", "bad"] * 3)])
    replies = ["Pottery class left my hands sore but happy.", "Kayaking the river at dawn felt endless.",
               "Chess openings bore me to tears.", "This bread recipe never rises properly.",
               "Night trains beat flying every single time.", "Urban bees produce surprisingly floral honey."]
    teacher = ScriptedTeacher(replies)
    result = synthesize(seeds, teacher, tmp_path / "o.jsonl", SynthOptions(n=4, max_rounds=1))
    assert result.kept == 4
    for ask, row in zip(teacher.asked, result.rows):
        assert f'with the label "{row["label"]}"' in ask[0]["content"]


def test_tiny_local_teacher_writes_valid_distinct_rows(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "out.jsonl"
    result = synthesize(seeds, LocalTeacher("tiny-random-llama"), out, SynthOptions(n=4, max_new_tokens=8, seed=1))
    assert result.kept == 4
    rows = load_dataset(out)  # raises on any invalid row
    texts = [row_text(r, "prompt_completion") for r in [*SEEDS, *rows.rows]]
    assert find_duplicates(texts) == []
    assert len(read_jsonl(tmp_path / "out.provenance.jsonl")) == 4


@pytest.fixture
def stub_server():
    """A local OpenAI-compatible /v1/chat/completions that numbers its replies and records requests."""
    seen, numbers = [], count(1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            n = next(numbers)
            status, reply = (200, {"choices": [{"message": {"role": "assistant",
                                                            "content": f"Stub reply {n} about topic {n * 7919}"}}]})
            if body["model"] == "broken":
                status, reply = 503, {"error": "overloaded"}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_http_teacher_through_the_cli(tmp_path, stub_server, monkeypatch, capsys):
    url, seen = stub_server
    monkeypatch.setenv("STUB_KEY", "sk-test")
    quickstart = (EXAMPLES / "quickstart" / "train.jsonl").read_text().splitlines()
    seeds = write_jsonl(tmp_path / "seeds.jsonl", quickstart[:5])
    out = tmp_path / "synth.jsonl"
    code = main(["data", "synth", "--seed-file", str(seeds), "--n", "3", "--teacher", "gpt-x", "-o", str(out),
                 "--base-url", url, "--api-key-env", "STUB_KEY", "--temperature", "0.5"])
    assert code == 0, capsys.readouterr()
    assert "wrote 3 rows" in capsys.readouterr().out
    assert {s["path"] for s in seen} == {"/v1/chat/completions"} and {s["auth"] for s in seen} == {"Bearer sk-test"}
    assert seen[0]["body"]["model"] == "gpt-x" and seen[0]["body"]["temperature"] == 0.5
    rows = load_dataset(out)
    assert rows.format == "messages" and len(rows.rows) == 3
    assert rows.rows[0]["messages"][0]["content"].startswith("Stub reply")
    assert read_jsonl(tmp_path / "synth.provenance.jsonl")[0]["teacher"] == f"gpt-x @ {url}"


def test_http_errors_are_user_errors(stub_server):
    url, _ = stub_server
    with pytest.raises(ModelError, match="HTTP 503"):
        HttpTeacher(url + "/v1", "broken", None).chat([[{"role": "user", "content": "hi"}]], 8, 0.0, 0)
    with pytest.raises(ModelError, match="no usable answer"):
        HttpTeacher("http://127.0.0.1:9", "m", None, timeout=2).chat([[{"role": "user", "content": "hi"}]], 8, 0, 0)


@pytest.mark.e2e
def test_bundled_teacher_expands_five_seeds(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "out.jsonl"
    result = synthesize(seeds, LocalTeacher("smollm2-135m-instruct"), out,
                        SynthOptions(n=3, max_new_tokens=16, shots=2, seed=0, max_rounds=3))
    assert result.kept == 3
    rows = load_dataset(out)
    texts = [row_text(r, "prompt_completion") for r in [*SEEDS, *rows.rows]]
    assert find_duplicates(texts) == []
    assert all(r["prompt"].strip() and r["completion"].strip() for r in rows.rows)
