"""The run directory as an object with a lifecycle: one module names its files, status.json says what the run
is doing from the moment the directory exists (and a reader tells a killed run from a live one), events.jsonl
holds the typed records the CLI prints, and one resolve step makes the config the run uses."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, write_jsonl
from tunelab.errors import ConfigError, DataError, RunInterrupted, TunelabError
from tunelab.events import Event, Events, batch_starts
from tunelab.rundir import (DEAD, FAILED, INTERRUPTED, RUNNING, STALE_AFTER, SUCCEEDED, EventLog, RunDir,
                            effective_state, read_events, tail_events)
from tunelab.train.run import run

SRC = REPO / "src" / "tunelab"
QUICK = ("eval.generate=false", "eval.forgetting_probe=false", "eval.few_shot_k=0", "eval.train_sample=0",
         "train.precision=fp32")


def named_files(path: Path) -> list[str]:
    """Where a module spells a run directory's file: a string equal to one of its names, or `x / "model"`."""
    names = {RunDir.CONFIG, RunDir.SUMMARY, RunDir.METRICS, RunDir.STATUS, RunDir.EVENTS, RunDir.DATA,
             RunDir.VERSIONS, RunDir.SAMPLES, RunDir.BEFORE}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in (RunDir.MODEL, RunDir.CHECKPOINTS):
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: / {node.right.value!r}")
    return found


NOT_A_RUN = {"models/registry.py"}  # `package_dir(...) / "model"`: a bundled model package's folder


def test_no_module_but_rundir_names_the_run_directory_files():
    spelled = [hit for path in sorted(SRC.rglob("*.py")) if path.name != "rundir.py"
               and str(path.relative_to(SRC)) not in NOT_A_RUN for hit in named_files(path)]
    assert spelled == []


def test_named_files_finds_a_planted_spelling(tmp_path):
    planted = SRC / "_planted_for_test.py"
    planted.write_text('import json\nsummary = json.loads((run_dir / "summary.json").read_text())\nm = run_dir / "model"\n')
    try:
        assert len(named_files(planted)) == 2
    finally:
        planted.unlink()


def test_status_and_events_from_the_first_moment_to_success(tiny_config):
    seen, at_start = [], {}

    def listen(event: Event) -> None:
        seen.append(event)
        if event.kind == "run_started":
            at_start.update(RunDir(event.fields["run_dir"]).read_status())

    config = tiny_config(*QUICK)
    result = run(config, on_event=listen)
    assert at_start["state"] == "created" and at_start["pid"] == os.getpid() and at_start["heartbeat_at"] > 0
    status = RunDir(result.run_dir).read_status()
    assert status["state"] == SUCCEEDED and status["finished_at"] >= status["started_at"] and status["step"] == 4
    assert RunDir(result.run_dir).state() == SUCCEEDED
    # events.jsonl holds exactly the records the listener (the CLI) was given, in order
    logged = RunDir(result.run_dir).read_events()
    assert [(e.seq, e.kind, e.message, e.fields) for e in logged] == \
        [(e.seq, e.kind, e.message, json.loads(json.dumps(e.fields))) for e in seen]
    kinds = [e.kind for e in logged]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert {"validating", "validation", "saving_checkpoint", "checkpoint_saved", "progress"} <= set(kinds)
    scored = [e.fields for e in logged if e.kind == "progress" and e.fields["what"] == "scoring loss"]
    assert scored[-1]["done"] == scored[-1]["total"] == 4  # the 4 held-out rows


def test_resolve_makes_the_config_the_run_used_and_leaves_the_callers_alone(tiny_config, tmp_path):
    from tunelab.config import dump_config
    from tunelab.inputs import load_data, resolve

    rows = [{"text": f"Story {i} is about a {'cat' if i % 2 else 'dog'}.", "label": "cat" if i % 2 else "dog"}
            for i in range(24)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    config = tiny_config(f"data.train={data}", "data.eval=null", "train.max_steps=-1", "train.epochs=auto", *QUICK)
    before = config.model_dump()
    complete = resolve(config, load_data(config))
    assert config.model_dump() == before  # task, epochs and labels were decided without writing into it
    assert complete.task == "classify" and complete.classify.labels == ["cat", "dog"]
    assert complete.train.epochs == 8.0 and complete.train.early_stopping_patience == 2
    short = tiny_config(f"data.train={data}", "data.eval=null", *QUICK)
    unchanged = short.model_dump()
    result = run(short)
    assert short.model_dump() == unchanged and short.task == "auto"
    assert RunDir(result.run_dir).read_config_text() == dump_config(resolve(short, load_data(short)))
    assert RunDir(result.run_dir).read_config()["classify"]["labels"] == ["cat", "dog"]


def test_a_data_error_leaves_a_failed_status_and_a_corrected_command_replaces_it(tiny_config, tmp_path, chat_rows):
    bad = write_jsonl(tmp_path / "bad.jsonl", chat_rows[:19] + ['{"messages": [{"role": "bot", "content": "x"}]}'])
    with pytest.raises(DataError):
        run(tiny_config(f"data.train={bad}", *QUICK))
    out = RunDir(tmp_path / "run")
    status = out.read_status()
    assert status["state"] == FAILED and status["error"]["type"] == "DataError" and "bad.jsonl:20" in status["error"]["message"]
    assert [e.kind for e in out.read_events()] == ["run_failed"] and not out.has_config()

    seen = []
    result = run(tiny_config(*QUICK), on_event=seen.append)
    replaced = [e for e in seen if e.kind == "run_replaced"]
    assert len(replaced) == 1 and "replacing the failed run there (it failed: " in replaced[0].message
    assert RunDir(result.run_dir).state() == SUCCEEDED
    assert [e.kind for e in RunDir(result.run_dir).read_events()][0] == "run_replaced"  # the old log went with it


def test_a_failed_run_of_the_same_command_resumes_instead(tiny_config, monkeypatch):
    import tunelab.train.run as run_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_module, "finish", broken)
    config = tiny_config(*QUICK)
    with pytest.raises(RuntimeError):
        run(config)
    out = RunDir(config.output_dir)
    assert out.state() == FAILED and out.read_status()["error"] == {"type": "RuntimeError", "message": "disk full"}
    assert [e.kind for e in out.read_events()][-1] == "run_failed"
    monkeypatch.undo()
    seen = []
    run(config, on_event=seen.append)
    assert [e.fields["step"] for e in seen if e.kind == "resumed"] == [4]  # the checkpoint written at the end
    assert not [e for e in seen if e.kind in ("step", "run_replaced")]


def test_a_refused_directory_is_left_as_it_was(tiny_config):
    config = tiny_config(*QUICK)
    run(config)
    status = RunDir(config.output_dir).read_status()
    with pytest.raises(TunelabError, match="already holds a finished run"):
        run(tiny_config(*QUICK, "train.seed=7"))
    assert RunDir(config.output_dir).read_status() == status


def test_a_run_held_by_another_process_is_refused(tiny_config):
    config = tiny_config(*QUICK)
    held = RunDir(config.output_dir).lock()  # as the process writing it would hold it
    try:
        with pytest.raises(TunelabError, match="another process is writing a run there"):
            run(config)
    finally:
        held.close()


def test_a_stale_heartbeat_or_a_gone_process_reads_as_dead():
    now = time.time()
    alive = {"state": RUNNING, "pid": os.getpid(), "host": os.uname().nodename, "heartbeat_at": now}
    assert effective_state(alive, now) == RUNNING
    assert effective_state(alive, now + STALE_AFTER + 1) == DEAD
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert effective_state({**alive, "pid": gone.pid}, now) == DEAD
    assert effective_state({**alive, "state": SUCCEEDED}, now + 10 * STALE_AFTER) == SUCCEEDED


def test_events_log_keeps_typed_records_and_a_reader_tails_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    events = Events()
    events.attach_log(EventLog(path))
    events.emit("step", step=1, max_steps=2, loss=None, tokens_per_second=3.0)
    first, offset = tail_events(path)
    assert [(e.kind, e.level, e.message) for e in first] == [("step", "progress", "step 1/2")]
    with open(path, "a") as handle:
        handle.write('{"v": 1, "seq": 2, "kind": "st')  # a line being written (or cut by a kill)
    assert tail_events(path, offset) == ([], offset) and len(read_events(path)) == 1
    with pytest.raises(ValueError, match='event kind "stepp" is not declared'):
        events.emit("stepp", step=1)


def test_events_emitted_before_the_log_exists_are_written_first(tmp_path):
    events = Events()
    events.emit("warning", message="early")
    events.attach_log(EventLog(tmp_path / "e.jsonl"))
    events.emit("warning", message="late")
    assert [(e.seq, e.message) for e in read_events(tmp_path / "e.jsonl")] == [(1, "early"), (2, "late")]


def test_counted_loops_report_to_the_active_run_only():
    seen = []
    assert list(batch_starts("rows", 5, 2)) == [0, 2, 4]  # no active run: nothing to report to
    with Events(seen.append).active():
        assert list(batch_starts("rows", 5, 2)) == [0, 2, 4]
    assert [e.fields["done"] for e in seen][0] == 0 and seen[-1].fields["done"] == seen[-1].fields["total"] == 5


def test_dpo_with_a_method_trl_cannot_switch_off_is_refused_before_any_model_loads(tiny_config, tmp_path, monkeypatch):
    import tunelab.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    monkeypatch.setattr(loading, "load_tokenizer", no_loading)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Colour {i}?", "chosen": "red", "rejected": "no"}
                                                   for i in range(8)])
    for method in ("bitfit", "full"):
        with pytest.raises(ConfigError, match=f'method "{method}" has none that TRL can use'):
            run(tiny_config(f"data.train={pairs}", "data.eval=null", "task=dpo", f"method={method}", *QUICK))


def test_ctrl_c_in_the_final_evaluation_says_what_is_kept_and_the_rerun_reuses_it(tiny_config, monkeypatch):
    from tunelab.eval import evidence

    real = evidence.after_training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evidence, "after_training", interrupted)
    config = tiny_config(*QUICK)
    with pytest.raises(RunInterrupted) as err:
        run(config)
    assert str(err.value).startswith("Ctrl-C while evaluating after training on the held-out set; kept: the evidence "
                                     "measured before training and the training up to step 4")
    assert err.value.exit_code == 130 and err.value.run_dir == config.output_dir
    out = RunDir(config.output_dir)
    assert out.state() == INTERRUPTED and [e.kind for e in out.read_events()][-1] == "run_interrupted"
    monkeypatch.setattr(evidence, "after_training", real)
    seen = []
    result = run(config, on_event=seen.append)
    kinds = [e.kind for e in seen]
    assert "reused" in kinds and "step" not in kinds
    assert not [e for e in seen if e.kind == "evaluating" and e.fields["which"] == "before"]
    assert result.summary["before"] == json.loads(json.dumps(out.read_before()["zero_shot"]["metrics"]))


def test_the_cli_prints_the_resume_command_after_ctrl_c_in_evaluation(tiny_config, monkeypatch, capsys, tmp_path,
                                                                      chat_rows):
    from tunelab.cli import main
    from tunelab.eval import evidence

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evidence, "after_training", interrupted)
    train = write_jsonl(tmp_path / "t.jsonl", chat_rows[:20])
    held = write_jsonl(tmp_path / "e.jsonl", chat_rows[20:])
    argv = ["run", f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama", "train.batch_size=4",
            "train.max_steps=2", "train.max_length=64", f"output_dir={tmp_path / 'r'}", *QUICK]
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("stopped: Ctrl-C while evaluating after training")
    assert err[-1].startswith("resume with: tunelab run ") and err[-1].endswith(f"output_dir={tmp_path / 'r'} --resume")


def test_an_unfinished_run_of_the_same_config_under_runs_is_announced(tiny_config, tmp_path, monkeypatch):
    from tunelab.eval import evidence

    monkeypatch.chdir(tmp_path)
    real = evidence.after_training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evidence, "after_training", interrupted)
    with pytest.raises(RunInterrupted) as err:
        run(tiny_config("output_dir=null", "name=same", *QUICK))
    first = err.value.run_dir
    monkeypatch.setattr(evidence, "after_training", real)
    time.sleep(1.1)  # a new timestamped directory
    seen = []
    result = run(tiny_config("output_dir=null", "name=same", *QUICK), on_event=seen.append)
    said = [e for e in seen if e.kind == "unfinished_run"]
    assert len(said) == 1 and said[0].fields["run_dir"] == str(first) and "--resume" in said[0].message
    assert result.run_dir != first


def test_a_seeded_run_resumes_reusing_the_seeds_that_finished(tiny_config):
    from tunelab.experiments import run_experiment

    config = tiny_config("train.seeds=[1, 2]", "train.max_steps=2", *QUICK)
    finals = []

    def die_in_seed_2s_final_evaluation(event):
        if event.kind == "evaluating" and event.fields.get("which") == "after":
            finals.append(event)
            if len(finals) == 2:
                raise KeyboardInterrupt  # as if killed here

    with pytest.raises(RunInterrupted):
        run_experiment(config, on_event=die_in_seed_2s_final_evaluation)
    parent = RunDir(config.output_dir)
    seen = []
    result = run_experiment(config, on_event=seen.append)
    assert [e.fields["seed"] for e in seen if e.kind == "seed_reused"] == [1]
    assert [e.fields["step"] for e in seen if e.kind == "resumed"] == [2]
    assert result.summary["repeat"]["seeds"] == [1, 2] and parent.state() == SUCCEEDED


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="the test runner handles SIGTERM")
def test_sigterm_outside_training_stops_the_run_as_interrupted(tiny_config, monkeypatch):
    from tunelab.eval import evidence

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(evidence, "before_training", terminated)
    config = tiny_config(*QUICK)
    with pytest.raises(RunInterrupted) as err:
        run(config)
    assert err.value.exit_code == 143 and str(err.value).startswith("SIGTERM while evaluating before training")
    assert RunDir(config.output_dir).state() == INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_worker_that_imports_run_is_offline_and_loads_safely(tmp_path, tiny_config):
    """Called as a job worker would: no CLI, HF_HUB_OFFLINE unset, any connection attempt recorded and refused."""
    overrides = [f"{key}={value}" for key, value in flat(tiny_config(*QUICK)).items()]
    script = textwrap.dedent(f"""
        import json, socket, sys
        attempts = []
        def refuse(self, address):
            attempts.append(str(address))
            raise OSError("no network in this test")
        socket.socket.connect = refuse
        from tunelab.config import load_config
        from tunelab.train.run import run
        import huggingface_hub.constants, os
        result = run(load_config(None, {overrides!r}))
        print(json.dumps({{"offline": os.environ.get("HF_HUB_OFFLINE"), "hub": huggingface_hub.constants.HF_HUB_OFFLINE,
                          "attempts": attempts, "state": json.load(open(result.run_dir / "status.json"))["state"]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"offline": "1", "hub": True, "attempts": [], "state": "succeeded"}


def flat(config) -> dict[str, object]:
    """The settings of a config as key=value overrides (what the test fixture gave)."""
    out = {}
    for key in ("data.train", "data.eval", "model", "output_dir", "train.batch_size", "train.max_steps",
                "train.max_length", "eval.max_new_tokens", "eval.generate", "eval.forgetting_probe", "eval.few_shot_k",
                "eval.train_sample", "train.precision"):
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        out[key] = str(node).lower() if isinstance(node, bool) else node
    return out


def test_a_teacher_loads_through_the_one_loader(tmp_path, tiny_model_dir):
    import shutil

    import torch

    from tunelab.data.teachers import LocalTeacher
    from tunelab.errors import ModelError

    target = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("*.safetensors", ".complete"))
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, target / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickle files \(pytorch_model.bin\)"):
        LocalTeacher(str(target))


def test_generation_reports_rows_while_a_batch_decodes(tiny_model_dir, tokenizer, monkeypatch):
    from tunelab.models.loading import load_model
    from tunelab.scoring.generate import generate

    monkeypatch.setattr("tunelab.events.COUNT_INTERVAL", 0.0)  # every change reported, not one a second
    model = load_model(tiny_model_dir)
    prompts = [tokenizer(f"Say {i}", add_special_tokens=True)["input_ids"] for i in range(8)]
    seen = []
    with Events(seen.append).active():
        answers = generate(model, tokenizer, prompts, max_new_tokens=16, batch_size=8)
    done = [e.fields["done"] for e in seen if e.fields["what"] == "generating answers"]
    assert len(answers) == 8 and done[0] == 0 and done[-1] == 8 and done == sorted(done)
    assert [d for d in done if 0 < d < 8]  # one batch of all 8 rows: counted while it decodes, not only at its end


CONFIG_WRITERS = {"config.py", "inputs.py",  # the config itself, and the one step that completes it
                  "experiments/sweep.py",    # best.yaml's config for a later run, written before it runs
                  "models/students.py"}      # a transformers model config, the student being built


def config_writes(path: Path) -> list[str]:
    """Assignments into a config object (`config.task = ...`, `cfg.train.epochs = ...`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        for target in (t for tree in targets for t in (tree.elts if isinstance(tree, (ast.Tuple, ast.List)) else [tree])):
            root = target
            while isinstance(root, ast.Attribute):
                root = root.value
            if target is not root and isinstance(root, ast.Name) and root.id in ("config", "cfg"):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_no_module_writes_into_a_config_after_resolve():
    writes = [hit for path in sorted(SRC.rglob("*.py")) if str(path.relative_to(SRC)) not in CONFIG_WRITERS
              for hit in config_writes(path)]
    assert writes == []


class Terminal:
    """What a terminal would receive (isatty: bars are drawn and redrawn)."""

    def __init__(self):
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_the_console_prints_each_events_own_words_and_draws_counted_loops():
    from tunelab.cli_output import ConsoleProgress

    screen = Terminal()
    console = ConsoleProgress(screen, tick=0.05)
    events = Events(console)
    console.waiting("starting: loading the training libraries")
    events.emit("evaluating", which="before")
    with events.active():
        for _ in batch_starts("scoring loss", 3, 1):
            time.sleep(0.1)  # the ticker redraws the elapsed time meanwhile
    events.emit("warning", message="a row was cut")
    events.emit("run_failed", error_type="DataError", error="x")  # the CLI prints the error itself
    console.close()
    assert "starting: loading the training libraries ..." in screen.text  # drawn, then cleared by the first line
    lines = [line.rsplit("\r", 1)[-1].strip() for line in screen.text.split("\n")]
    assert "evaluating before training on the held-out set ..." in lines and "warning: a row was cut" in lines
    assert "scoring loss" in screen.text and "3/3" in screen.text and "failed" not in screen.text


def test_a_reward_run_is_read_through_the_one_reader_before_the_run_begins(tiny_config, tmp_path):
    reward = tmp_path / "reward-run"
    (reward / "model").mkdir(parents=True)
    (reward / "summary.json").write_text("{}")
    (reward / "config.yaml").write_text("task: reward\nmodel: tiny-random-llama\nmethod: lora\nlora: {rank: 8}\n"
                                        "data: {train: x.jsonl}\n")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Colour {i}?"} for i in range(8)])
    config = tiny_config(f"data.train={prompts}", "data.eval=null", "task=rlhf", f"rlhf.reward_model={reward}", *QUICK)
    with pytest.raises(ConfigError, match=r'(?s)reward-run: its config no longer validates:.*unknown key "lora.rank"'):
        run(config)
    assert RunDir(config.output_dir).read_status()["error"]["type"] == "ConfigError"  # refused before it began
