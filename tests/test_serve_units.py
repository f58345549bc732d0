"""The service's parts on their own, without a server: the "auto" rules, what the tunelab extension may set,
OpenAI's data error codes, keys, the store's pages, stop strings, and a run directory read into job events."""

from __future__ import annotations

import json

import pytest

from tests.serve_server import chat_rows, write_jsonl
from tunelab.errors import ConfigError
from tunelab.events import Event
from tunelab.serve import hyper
from tunelab.serve.auth import authenticate, check_bind, load_keys, owner_of
from tunelab.serve.datacheck import check_file
from tunelab.serve.errors import ApiError
from tunelab.serve.requests import StopCut
from tunelab.serve.observe import job_event, results_csv
from tunelab.serve.store import Store


@pytest.mark.parametrize(("rows", "epochs"), [(3, 25), (10, 10), (22, 5), (40, 3), (5000, 3), (10000, 2), (30000, 1)])
def test_auto_epochs_follow_openai_rule(rows, epochs):
    assert hyper.auto_epochs(rows) == epochs
    seen = rows * epochs
    assert 1 <= epochs <= 25 and (100 <= seen <= 25000 or epochs in (1, 25))


def test_auto_batch_and_resolved_values():
    assert [hyper.auto_batch(n) for n in (10, 1000, 10**6)] == [1, 2, 256]
    resolved = hyper.resolve("dpo", {"n_epochs": 2, "batch_size": "auto"}, 1000)
    assert resolved == {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 1.0, "beta": 0.1}
    rl = hyper.resolve("reinforcement", {"compute_multiplier": 1.5, "batch_size": 8}, 100)
    assert rl["batch_size"] % 6 == 0 and rl["eval_interval"] == hyper.steps_per_epoch(100, 8)
    settings = hyper.run_settings("supervised", resolved, 5, 1000, 1e-3)
    assert settings["train.learning_rate"] == 1e-3 and settings["train.save_steps"] == 500


@pytest.mark.parametrize("key", ["data.train", "output_dir", "model", "rlhf.reward_function", "train.seeds",
                                 "data.columns.prompt", "rlhf.grader", "rlhf.allow_python_grader"])
def test_extension_cannot_reach_the_jobs_own_settings(key):
    with pytest.raises(ApiError) as refused:
        hyper.extension({key: "x"})
    assert refused.value.param == f"method.tunelab.{key}"


@pytest.mark.parametrize(("key", "value"), [("eval.metrics", ["os:system"]), ("distill.teacher", "/srv/models/big"),
                                            ("distill.teacher", "~/models")])
def test_extension_refuses_code_and_paths(key, value):
    with pytest.raises(ApiError, match="path or import code"):
        hyper.extension({key: value})


def test_path_typed_settings_are_found_by_their_type():
    assert hyper._is_path_setting("rlhf.reward_model") and hyper._is_path_setting("data.eval")
    assert not hyper._is_path_setting("lora.r") and not hyper._is_path_setting("train.max_steps")


def test_extension_takes_strategies_and_their_settings():
    given = {"method": "qlora", "lora.r": 8, "train.max_steps": 3, "eval.metrics": ["exact_match"]}
    assert hyper.extension(given) == given


def test_data_errors_name_line_field_and_openai_code(tmp_path):
    rows = [*chat_rows(12), {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x",
                                                                             "wieght": 0}]}]
    with pytest.raises(ApiError) as refused:
        check_file(write_jsonl(tmp_path / "t.jsonl", rows), "supervised", "training_file", "t.jsonl")
    assert refused.value.code == "message_unrecognized_key"
    assert 't.jsonl:13: field "messages[1].wieght"' in refused.value.message
    ok = check_file(write_jsonl(tmp_path / "ok.jsonl", chat_rows(10)), "supervised", "training_file", "ok.jsonl")
    assert (ok.format, ok.rows) == ("messages", 10)


def test_rows_with_tools_are_refused_not_silently_dropped(tmp_path):
    rows = chat_rows(12)
    rows[2] = {**rows[2], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    with pytest.raises(ApiError) as refused:
        check_file(write_jsonl(tmp_path / "t.jsonl", rows), "supervised", "training_file", "t.jsonl")
    assert refused.value.code == "unsupported_tools" and 't.jsonl:3: field "tools"' in refused.value.message


def test_reinforcement_rows_end_with_the_user(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": "a"} for i in range(10)]
    assert check_file(write_jsonl(tmp_path / "rl.jsonl", rows), "reinforcement", "training_file", "rl").rows == 10
    rows[4]["messages"].append({"role": "assistant", "content": "a"})
    with pytest.raises(ApiError) as refused:
        check_file(write_jsonl(tmp_path / "rl.jsonl", rows), "reinforcement", "training_file", "rl")
    assert refused.value.code == "example_last_message_not_user" and "rl:5:" in refused.value.message


def test_a_fine_tuned_model_is_not_a_base_to_tune(tmp_path):
    from tunelab.serve.auth import Caller
    from tunelab.serve.catalog import Catalog
    from tunelab.serve.files import Files
    from tunelab.serve.jobs import Jobs

    store = Store(tmp_path / "s.db")
    jobs = Jobs(store, Files(store, tmp_path / "f", 10), Catalog(store), tmp_path / "jobs", lambda: None)
    with pytest.raises(ApiError) as refused:
        jobs.create(Caller("me", "personal"), {"model": "ft:tiny-random-llama:personal::abc", "training_file": "x"})
    assert (refused.value.status, refused.value.code) == (400, "model_not_available")


def test_keys_from_env_and_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - key: file-key-123456\n    org: acme\n")
    keys = load_keys(path, "env-key-1234567,labs=env-key-7654321")
    assert {c.org for c in keys.values()} == {"acme", "personal", "labs"}
    assert authenticate(keys, "Bearer env-key-7654321").org == "labs"
    for header, code in ((None, "missing_api_key"), ("Bearer nope-nope-nope", "invalid_api_key")):
        with pytest.raises(ApiError) as refused:
            authenticate(keys, header)
        assert (refused.value.status, refused.value.code) == (401, code)
    assert owner_of("env-key-1234567") in keys and "env-key-1234567" not in json.dumps(list(keys))


def test_open_server_binds_loopback_only():
    check_bind("127.0.0.1", {})
    check_bind("::1", {})
    with pytest.raises(ConfigError, match="without API keys"):
        check_bind("0.0.0.0", {})
    check_bind("0.0.0.0", load_keys(None, "some-key-123456"))


def test_event_pages_newest_first(tmp_path):
    store = Store(tmp_path / "s.db")
    store.add_job("me", {"id": "ftjob-1", "created_at": 1, "status": "queued"}, "w", {}, [])
    store.add_events("ftjob-1", [{"level": "info", "message": f"m{i}"} for i in range(5)])
    first = store.events("ftjob-1", None, 2)
    assert [e["message"] for e in first] == ["m4", "m3"]
    assert [e["message"] for e in store.events("ftjob-1", first[-1]["id"], 10)] == ["m2", "m1", "m0"]
    store.close()
    again = Store(tmp_path / "s.db")  # what was committed is there after a reopen
    assert len(again.events("ftjob-1", None, 10)) == 5 and again.job("ftjob-1", "me")["status"] == "queued"
    assert again.job("ftjob-1", "someone else") is None


@pytest.mark.parametrize(("pieces", "stops", "shown", "hit"), [
    (["Hel", "lo wo", "rld"], ["o w"], "Hell", True),
    (["ab", "c"], ["x"], "abc", False),
    (["a<", "/s", ">b"], ["</s>"], "a", True),
    (["a<", "b"], ["<x"], "a<b", False)])
def test_stop_strings_cut_the_stream(pieces, stops, shown, hit):
    cut = StopCut(stops)
    text = "".join(cut.feed(p) for p in pieces) + cut.flush()
    assert (text, cut.hit) == (shown, hit)


def test_run_events_become_job_events(tmp_path):
    step = job_event(Event("step", "progress", "step 2/4", {"step": 2, "max_steps": 4, "loss": 9.0}), {2: 1.5},
                     tmp_path)
    assert step["type"] == "metrics" and step["data"] == {"step": 2, "train_loss": 1.5, "total_steps": 4}
    said = job_event(Event("run_started", "info", f"run dir {tmp_path}/run", {}), {}, tmp_path)
    assert said == {"created_at": said["created_at"], "level": "info", "type": "message", "message": "run dir run"}
    assert job_event(Event("progress", "progress", "x", {}), {}, tmp_path) is None
    assert job_event(Event("warning", "warning", "careful", {}), {}, tmp_path)["level"] == "warn"


def test_results_csv_merges_train_and_validation_rows(tmp_path):
    from tunelab.rundir import RunDir

    run = RunDir(tmp_path)
    write_jsonl(run.metrics_path, [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5},
                                   {"step": 2, "epoch": 1.0, "eval_loss": 1.7}])
    lines = results_csv(run).decode().splitlines()
    assert lines == ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy", "1,2.0,,,", "2,1.5,,1.7,"]


def test_reinforcement_job_grades_each_completion_with_its_item(tmp_path):
    """A reinforcement job's config (OpenAI's rows as they came, the grader as rlhf.grader, python graders as the
    server allows) and its run: two GRPO steps whose rewards are the grader's (about 10 s)."""
    import shutil

    import yaml

    from tunelab.config import load_config
    from tunelab.rundir import RunDir
    from tunelab.serve.auth import Caller
    from tunelab.serve.catalog import Catalog
    from tunelab.serve.files import Files
    from tunelab.serve.jobs import Jobs
    from tunelab.train.run import run

    store = Store(tmp_path / "s.db")
    files = Files(store, tmp_path / "files", 10**6)
    rows = [{"messages": [{"role": "user", "content": f"Say {w} ({i})."}], "answer": w}
            for i, w in enumerate(["yes", "no"] * 8)]
    ids = []
    for name, part in (("train.jsonl", rows[:12]), ("valid.jsonl", rows[12:])):
        blob = f"{name}-blob.jsonl"
        shutil.copyfile(write_jsonl(tmp_path / name, part), files.root / blob)
        ids.append(f"file-{name[:5]}")
        store.add_file({"id": ids[-1], "owner": "me", "filename": name, "purpose": "fine-tune", "bytes": 1,
                        "created_at": 0, "expires_at": None, "status": "processed", "blob": blob})
    jobs = Jobs(store, files, Catalog(store), tmp_path / "jobs", lambda: None)
    grader = {"type": "string_check", "name": "g", "operation": "eq", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}"}
    body = jobs.create(Caller("me", "personal"), {"model": "tiny-random-llama", "training_file": ids[0],
                                                  "validation_file": ids[1], "method": {
        "type": "reinforcement", "reinforcement": {"grader": grader},
        "tunelab": {"train.max_steps": 2, "rlhf.max_completion_length": 4, "eval.max_examples": 2,
                    "eval.forgetting_probe": False, "eval.train_sample": 0, "train.precision": "fp32"}}})
    assert body["method"]["reinforcement"]["hyperparameters"]["batch_size"] == 4  # whole groups of 4 completions
    folder = jobs.folder(store.job(body["id"]))
    config = yaml.safe_load((folder / "job.yaml").read_text())
    assert (config["task"], config["rlhf"]["grader"], config["rlhf"]["allow_python_grader"]) == ("rlhf", grader, False)

    result = run(load_config(folder / "job.yaml"))  # the job's own run: GRPO, its reward the grader
    summary = result.summary
    assert summary["task"] == "rlhf" and summary["train"]["steps"] == 2 and "mean_reward" in summary["after"]
    rewards = [r["reward"] for r in RunDir(result.run_dir).read_metrics() if "reward" in r]
    assert rewards and all(0.0 <= r <= 1.0 for r in rewards)  # string_check's eq: each completion 0 or 1


def test_a_job_spreads_over_the_machine_through_tunelab_runs_own_launcher(tmp_path):
    """tunelab serve --job-nproc 2: each job's command is `tunelab run CONFIG --nproc 2 --launcher L`, which the CLI
    reads as a launch through torchrun or accelerate (tunelab.launch), the path tests/test_scale_ddp.py runs."""
    from tunelab.cli import _parser
    from tunelab.serve.app import ServeOptions, Service
    from tunelab.serve.worker import run_argv

    plain = Service(ServeOptions(tmp_path / "a"))
    spread = Service(ServeOptions(tmp_path / "b", job_nproc=2, job_launcher="accelerate"))
    assert plain.worker.run_args == ()
    argv = run_argv(tmp_path / "job.yaml", spread.worker.run_args)
    args = _parser().parse_args(argv[argv.index("run"):])
    assert (args.config, args.nproc, args.launcher) == (str(tmp_path / "job.yaml"), 2, "accelerate")
