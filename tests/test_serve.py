"""`tunelab serve` driven as a user drives OpenAI's API: the real pinned `openai` SDK against a real server
subprocess on a loopback port, training real (tiny) runs. One server and one supervised job are shared by the
module; every answer is checked against the SDK's own types (`strict`). About 2.5 minutes on 2 cores, most of it
the five tiny runs (each a `tunelab run` process: imports, evaluation before and after, a few steps)."""

from __future__ import annotations

import csv
import io
import re
import time

import httpx2
import openai
import pytest

from tests.serve_server import (KEYS, QUICK, Server, chat_rows, dpo_rows, error_of, strict, wait_for,
                                write_jsonl)

MAX_FILE_BYTES = 4 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "data", "--max-file-bytes", str(MAX_FILE_BYTES)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-files")
    return {"chat": write_jsonl(folder / "chat.jsonl", chat_rows(24)),
            "dpo": write_jsonl(folder / "dpo.jsonl", dpo_rows(24))}


@pytest.fixture(scope="module")
def client(server):
    return server.client("alice")


@pytest.fixture(scope="module")
def training_file(client, files):
    return strict(client.files.create(file=open(files["chat"], "rb"), purpose="fine-tune"))


def quick_job(client, training_file, **extra):
    method = extra.pop("method", {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}})
    return strict(client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=training_file.id,
                                                 method={**method, "tunelab": {**QUICK, **extra.pop("tunelab", {})}},
                                                 **extra))


@pytest.fixture(scope="module")
def tuned(client, training_file):
    job = quick_job(client, training_file, suffix="numbers", seed=7, metadata={"team": "docs"})
    assert job.status == "validating_files"
    return wait_for(client, job.id, ("succeeded", "failed", "cancelled"))


def test_files_upload_list_read_and_delete(client, files):
    made = strict(client.files.create(file=open(files["chat"], "rb"), purpose="fine-tune",
                                      expires_after={"anchor": "created_at", "seconds": 3600}))
    assert (made.object, made.purpose, made.status, made.filename) == ("file", "fine-tune", "processed", "chat.jsonl")
    assert made.bytes == files["chat"].stat().st_size and made.expires_at == made.created_at + 3600
    other = strict(client.files.create(file=open(files["dpo"], "rb"), purpose="fine-tune"))
    assert client.files.content(made.id).content == files["chat"].read_bytes()
    newest = client.files.list(limit=1, order="desc", purpose="fine-tune")
    assert [strict(f).id for f in newest.data] == [other.id] and newest.has_more
    after = client.files.list(after=other.id, limit=1, order="desc")
    assert [f.id for f in after.data] == [made.id]
    assert strict(client.files.retrieve(made.id)).bytes == made.bytes
    assert strict(client.files.delete(made.id)).deleted
    with pytest.raises(openai.NotFoundError) as gone:
        client.files.retrieve(made.id)
    assert error_of(gone.value)["code"] == "file_not_found"


def test_supervised_job_resolves_auto_and_succeeds(client, tuned):
    assert tuned.status == "succeeded", tuned.error
    hp = tuned.method.supervised.hyperparameters
    # 24 rows, 2 held out: 22 train; 3 epochs see 66 < 100 examples, so ceil(100 / 22) = 5 epochs
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (5, 4, 1.0)
    assert tuned.hyperparameters.n_epochs == 5 and tuned.seed == 7 and tuned.metadata == {"team": "docs"}
    assert re.fullmatch(r"ft:tiny-random-llama:personal:numbers:[0-9a-f]{8}", tuned.fine_tuned_model)
    assert tuned.trained_tokens > 0 and tuned.finished_at >= tuned.created_at and tuned.estimated_finish is None


def test_results_file_has_openai_columns(client, tuned):
    (result_id,) = tuned.result_files
    assert strict(client.files.retrieve(result_id)).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["train_loss"]) > 0 for r in rows) and float(rows[-1]["valid_loss"]) > 0


def test_events_newest_first_with_metrics(client, tuned):
    events = [strict(e) for e in client.fine_tuning.jobs.list_events(tuned.id, limit=100).data]
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message.startswith("Created fine-tuning job")
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    steps = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(d["step"] for d in steps) == [1, 2, 3, 4] and {d["total_steps"] for d in steps} == {4}
    assert all(d["train_loss"] > 0 for d in steps)
    assert any(e.type == "metrics" and e.data.get("valid_loss") for e in events)
    assert any("Held-out evidence" in e.message for e in events)
    first, second = (client.fine_tuning.jobs.list_events(tuned.id, limit=2, after=e) for e in (None, events[1].id))
    assert [e.id for e in first.data] == [e.id for e in events[:2]] and first.has_more
    assert [e.id for e in second.data] == [e.id for e in events[2:4]]


def test_checkpoints_are_models(client, tuned):
    points = [strict(c) for c in client.fine_tuning.jobs.checkpoints.list(tuned.id).data]
    assert [c.step_number for c in points] == [4, 2]
    assert [c.fine_tuned_model_checkpoint for c in points] == [f"{tuned.fine_tuned_model}:ckpt-step-{n}"
                                                                 for n in (4, 2)]
    assert points[1].metrics.train_loss > 0 and points[0].metrics.valid_loss > 0


def test_chat_with_the_tuned_model_and_a_checkpoint(client, tuned):
    ask = [{"role": "user", "content": "Say the number 3."}]
    for model in (tuned.fine_tuned_model, f"{tuned.fine_tuned_model}:ckpt-step-2"):
        whole = strict(client.chat.completions.create(model=model, messages=ask, max_tokens=6, temperature=0))
        assert whole.model == model and whole.choices[0].finish_reason in ("stop", "length")
        assert whole.usage.completion_tokens <= 6 and whole.usage.prompt_tokens > 5
        chunks = [strict(c) for c in client.chat.completions.create(
            model=model, messages=ask, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True})]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content  # greedy: the same answer, streamed
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    base = strict(client.chat.completions.create(model="tiny-random-llama", messages=ask, max_tokens=6, temperature=0,
                                                  max_completion_tokens=3))
    assert base.usage.completion_tokens <= 3


def test_completions_with_stop_and_seed(client, tuned):
    free = strict(client.completions.create(model=tuned.fine_tuned_model, prompt="Count: 1 2 3", max_tokens=8,
                                             temperature=0))
    text = free.choices[0].text
    assert text and free.object == "text_completion"
    stop = text.strip()[:2] if text.strip() else text[:1]
    cut = strict(client.completions.create(model=tuned.fine_tuned_model, prompt="Count: 1 2 3", max_tokens=8,
                                            temperature=0, stop=[stop]))
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="tiny-random-llama", prompt="Hello", max_tokens=6, temperature=1.0,
                                         seed=3).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]  # the same seed, the same sample


def test_evidence_travels_with_the_job(server, tuned):
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    summary = httpx2.get(f"{server.url}/fine_tuning/jobs/{tuned.id}/tunelab/summary", headers=headers).json()
    assert {"before", "after", "train", "diagnosis"} <= set(summary) and summary["train"]["steps"] == 4
    report = httpx2.get(f"{server.url}/fine_tuning/jobs/{tuned.id}/tunelab/report", headers=headers)
    assert report.status_code == 200 and report.text.lstrip().lower().startswith("<!doctype html")


def test_dpo_job(client, files):
    upload = client.files.create(file=open(files["dpo"], "rb"), purpose="fine-tune")
    job = quick_job(client, upload, method={"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 4}}})
    assert job.method.dpo.hyperparameters.beta == 0.1  # auto: TRL's default
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=3, temperature=0).choices[0].message.content is not None


def test_pause_resume_and_cancel(client, training_file):
    """About 70 s on 2 cores (three run starts: the paused run, its resumption, the cancelled run): the longest
    test of this module, kept to what pause, resume and cancel need."""
    paused = quick_job(client, training_file, tunelab={"train.max_steps": 40}, metadata={"case": "pause"})
    deadline = time.monotonic() + 240
    while not client.fine_tuning.jobs.checkpoints.list(paused.id).data:  # pause once training has begun
        assert time.monotonic() < deadline, "no checkpoint to pause at"
        time.sleep(0.2)
    assert strict(client.fine_tuning.jobs.pause(paused.id)).status in ("pausing", "paused")
    at_pause = wait_for(client, paused.id, ("paused",))
    assert at_pause.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(paused.id)
    assert strict(client.fine_tuning.jobs.resume(paused.id)).status == "queued"
    done = wait_for(client, paused.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(paused.id, limit=100)]  # every page
    assert "Job paused" in messages and any(m.startswith("Fine-tuning job resumed") for m in messages)
    resumed = [int(m.group(1)) for m in (re.match(r"resuming run at step (\d+)", m) for m in messages) if m]
    assert resumed and resumed[0] >= 2  # the rerun went on from the checkpoint the pause kept

    cancelled = quick_job(client, training_file, metadata={"case": "cancel"})
    wait_for(client, cancelled.id, ("running",))
    assert strict(client.fine_tuning.jobs.cancel(cancelled.id)).status == "cancelled"
    deadline = time.monotonic() + 120
    while "Job cancelled" not in [e.message for e in client.fine_tuning.jobs.list_events(cancelled.id).data]:
        assert time.monotonic() < deadline, "the cancelled run did not stop"
        time.sleep(0.5)
    final = wait_for(client, cancelled.id, ("cancelled",))
    assert final.fine_tuned_model is None and final.finished_at is not None
    listed = client.fine_tuning.jobs.list(metadata={"case": "cancel"})
    assert [strict(j).id for j in listed.data] == [cancelled.id]


def test_reinforcement_job_with_string_check(client, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Say yes ({i})."}], "answer": "yes"} for i in range(16)]
    train = client.files.create(file=open(write_jsonl(tmp_path / "rl.jsonl", rows[:12]), "rb"), purpose="fine-tune")
    valid = client.files.create(file=open(write_jsonl(tmp_path / "rl-valid.jsonl", rows[12:]), "rb"),
                                purpose="fine-tune")
    grader = {"type": "string_check", "name": "says yes", "operation": "ilike", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}"}  # ilike: contains, ignoring case
    assert strict(client.fine_tuning.alpha.graders.validate(grader=grader)).grader is not None
    ran = strict(client.fine_tuning.alpha.graders.run(grader=grader, model_sample="Yes!", item={"answer": "yes"}))
    assert ran.reward == 1.0
    job = quick_job(client, train, validation_file=valid.id,
                    method={"type": "reinforcement", "reinforcement": {"grader": grader}},
                    tunelab={"rlhf.max_completion_length": 4, "train.max_steps": 2})
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error


def test_models_list_retrieve_and_delete(client, tuned):
    job = client.fine_tuning.jobs.list(metadata={"team": "docs"}).data[0]
    listed = {strict(m).id: m for m in client.models.list().data}
    assert "tiny-random-llama" in listed and job.fine_tuned_model in listed
    tuned = strict(client.models.retrieve(job.fine_tuned_model))
    assert (tuned.to_dict()["parent"], tuned.to_dict()["root"], tuned.owned_by) == ("tiny-random-llama",) * 2 + (
        "personal",)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny-random-llama")
    assert strict(client.models.delete(job.fine_tuned_model)).deleted
    assert job.fine_tuned_model not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert error_of(gone.value)["code"] == "model_not_found"


# Bad input, as a new user would send it: the right status and error object, and the server keeps serving.

def refused(call, error_type):
    with pytest.raises(error_type) as caught:
        call()
    return error_of(caught.value)


def test_bad_training_files_are_refused_with_line_and_code(client, tmp_path, files):
    bad_json = write_jsonl(tmp_path / "bad.jsonl", [*chat_rows(11)[:3], '{"messages": [', *chat_rows(11)[3:]])
    bad_role = write_jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}, *chat_rows(11)])
    nine = write_jsonl(tmp_path / "nine.jsonl", chat_rows(9))
    cases = [(bad_json, "data_type", "bad.jsonl:4:"), (bad_role, "unrecognized_role", 'role.jsonl:1: field '
                                                      '"messages[0].role"'),
             (nine, "invalid_n_examples", "has 9 example(s)"), (files["dpo"], "invalid_training_file", "supervised")]
    for path, code, words in cases:
        upload = client.files.create(file=open(path, "rb"), purpose="fine-tune")
        error = refused(lambda: client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=upload.id),
                        openai.BadRequestError)
        assert (error["code"], error["param"]) == (code, "training_file") and words in error["message"], error
    assert client.models.list().data


def test_unknown_model_and_bad_requests(client, training_file):
    error = refused(lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}]),
                    openai.NotFoundError)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    error = refused(lambda: client.fine_tuning.jobs.create(model="gpt-4o", training_file=training_file.id),
                    openai.NotFoundError)
    assert error["code"] == "model_not_found"
    error = refused(lambda: client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training_file.id,
        method={"type": "supervised", "tunelab": {"data.train": "/etc/passwd"}}), openai.BadRequestError)
    assert error["param"] == "method.tunelab.data.train"
    error = refused(lambda: client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training_file.id,
        method={"type": "supervised", "tunelab": {"lora.rank": 8}}), openai.BadRequestError)
    assert error["code"] == "invalid_hyperparameters" and "lora.r" in error["message"]
    error = refused(lambda: client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=training_file.id,
                                                           hyperparameters={"n_epochs": 0}), openai.BadRequestError)
    assert error["param"] == "method.supervised.hyperparameters.n_epochs"
    assert client.models.list().data


def test_keys_wrong_and_foreign(server, client, tuned, training_file):
    for bad in ("not-a-key", ""):
        stranger = openai.OpenAI(base_url=server.url, api_key=bad or "x", max_retries=0)
        for call in (stranger.models.list, stranger.files.list, stranger.fine_tuning.jobs.list,
                     lambda: stranger.chat.completions.create(model="tiny-random-llama",
                                                              messages=[{"role": "user", "content": "x"}])):
            assert refused(call, openai.AuthenticationError)["code"] == "invalid_api_key"
    bare = httpx2.get(f"{server.url}/models")
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "missing_api_key"
    bob = server.client("bob")
    for call in (lambda: bob.files.retrieve(training_file.id), lambda: bob.files.content(training_file.id),
                 lambda: bob.fine_tuning.jobs.retrieve(tuned.id), lambda: bob.fine_tuning.jobs.cancel(tuned.id),
                 lambda: bob.fine_tuning.jobs.list_events(tuned.id),
                 lambda: bob.chat.completions.create(model=f"{tuned.fine_tuned_model}:ckpt-step-2",
                                                     messages=[{"role": "user", "content": "x"}])):
        refused(call, openai.NotFoundError)
    assert refused(lambda: bob.fine_tuning.jobs.create(model="tiny-random-llama", training_file=training_file.id),
                   openai.BadRequestError)["code"] == "file_not_found"
    assert training_file.id not in {f.id for f in bob.files.list().data}
    assert not bob.fine_tuning.jobs.list().data
    assert client.files.retrieve(training_file.id).id == training_file.id


def test_a_2gb_upload_is_refused_early(server, client, tmp_path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: 2 GB to the reader, no disk
    handle = open(huge, "rb")
    error = refused(lambda: client.files.create(file=handle, purpose="fine-tune"), openai.APIStatusError)
    assert error["code"] == "file_too_large" and "2147483" in error["message"]
    assert handle.tell() < 64 * 1024**2  # refused from its declared length: the SDK read little of the file
    sent = []

    def body():  # no declared length: the server counts the bytes and stops reading at its limit
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        for _ in range(2 * 1024):
            sent.append(1)
            yield b"x" * 1024**2

    answer = httpx2.post(f"{server.url}/files", content=body(), timeout=120,
                         headers={"Authorization": f"Bearer {KEYS['alice']}",
                                  "Content-Type": "multipart/form-data; boundary=xyz"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
    assert len(sent) < 2 * 1024  # the client was stopped long before 2 GB
    assert client.models.list().data


def test_python_grader_is_off_unless_enabled(client, training_file):
    grader = {"type": "python", "name": "mine", "source": "def grade(sample, item):\n    return 1.0\n"}
    error = refused(lambda: client.fine_tuning.alpha.graders.validate(grader=grader), openai.PermissionDeniedError)
    assert error["code"] == "python_grader_disabled"
    error = refused(lambda: client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x"),
                    openai.PermissionDeniedError)
    assert error["code"] == "python_grader_disabled"
    error = refused(lambda: client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training_file.id, validation_file=training_file.id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader}}), openai.PermissionDeniedError)
    assert error["param"] == "method.reinforcement.grader"
    assert client.models.list().data
