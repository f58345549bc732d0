"""Bad input, tried as a new user would: one line naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, write_jsonl
from tunelab.cli import main

QUICKSTART = str(EXAMPLES / "quickstart.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def good(tmp_path, chat_rows):
    return write_jsonl(tmp_path / "good.jsonl", chat_rows)


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_file(capsys, tmp_path):
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={tmp_path / 'nope.jsonl'}"))
    assert line.endswith("nope.jsonl: file not found")


def test_empty_file(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={empty}"))
    assert "empty.jsonl: no rows" in line


def test_row_with_a_wrong_field_names_file_line_and_field(capsys, tmp_path, chat_rows):
    rows = chat_rows[:3] + [{"messages": [{"role": "bot", "content": "hi"}]}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, err = run_cli(capsys, "run", QUICKSTART, f"data.train={path}")
    assert code == 2 and "Traceback" not in err
    assert f'{path}:4: field "messages[0].role": expected one of system|user|assistant, got "bot"' in err


def test_unknown_config_key(capsys, good):
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={good}", "train.epoch=3"))
    assert 'unknown key "train.epoch" (did you mean "epochs"?)' in line


def test_non_number_learning_rate(capsys, good):
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={good}", "train.learning_rate=abc"))
    assert "train.learning_rate" in line and '"abc"' in line


def test_model_path_that_does_not_exist(capsys, good, tmp_path):
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={good}", f"model={tmp_path / 'm'}"))
    assert "not a bundled alias" in line and "nor an existing directory" in line


def test_data_that_does_not_fit_the_task(capsys, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain text"}] * 3)
    line = one_line_error(*run_cli(capsys, "run", QUICKSTART, f"data.train={path}", "task=sft"))
    assert 'rows are "text" but task "sft" expects' in line


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "run", QUICKSTART, "train.batch_size=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: config: train.batch_size:")
    assert "Traceback" not in proc.stderr


def test_models_lists_the_bundled_aliases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in ("smollm2-135m-instruct", "tiny-random-llama", "minilm-l6"):
        assert alias in out


@pytest.mark.parametrize("argv", [
    ["compare", "a.yaml", "--methods", "lora,full", "lora.r=4", "train.max_steps=3"],
    ["compare", "a.yaml", "lora.r=4", "--methods", "lora,full", "train.max_steps=3"],
    ["compare", "a.yaml", "lora.r=4", "train.max_steps=3", "--methods", "lora,full"],
])
def test_overrides_may_stand_before_or_after_options(argv):
    from tunelab.cli import _parse, _parser

    args = _parse(_parser(), argv)
    assert (args.config, args.methods, args.overrides) == ("a.yaml", "lora,full", ["lora.r=4", "train.max_steps=3"])


def test_a_stray_argument_after_options_is_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "a.yaml", "--space", "s.yaml", "--trails", "8", "lora.r=4"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --trails 8" in capsys.readouterr().err


def test_a_misspelt_model_is_one_line_with_no_library_warning_before_it(tmp_path):
    """bitsandbytes (imported by transformers' Trainer through PEFT) asked for `pip install kernels` on avx512_bf16."""
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "run", QUICKSTART, "model=smollm2-135m-instrct"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        'error: model "smollm2-135m-instrct": not a bundled alias (smollm2-135m-instruct, tiny-random-llama, '
        'minilm-l6, tiny-random-bert) nor an existing directory (did you mean "smollm2-135m-instruct"?)']


def test_version(capsys):
    from tunelab import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"tunelab {__version__}"


def test_a_data_file_or_a_directory_given_as_the_config_says_what_to_do(capsys, good, tmp_path):
    line = one_line_error(*run_cli(capsys, "run", str(good)))
    assert line == f"error: {good}: a data file, not a YAML config; pass it as data.train={good} (after the YAML " \
                   "config, if any)"
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: tiny-random-llama\n")
    line = one_line_error(*run_cli(capsys, "run", str(run_dir)))
    assert line == f"error: {run_dir}: a directory, not a YAML config file; this run directory keeps its config " \
                   f"as {run_dir / 'config.yaml'}"
    assert "not a YAML config file" in one_line_error(*run_cli(capsys, "run", str(tmp_path)))


def test_a_yaml_syntax_error_names_its_line(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny-random-llama\ndata:\n  train: [a.jsonl\n  eval: b.jsonl\n")
    line = one_line_error(*run_cli(capsys, "run", str(path)))
    assert line.startswith(f"error: {path}:4:7: not valid YAML: expected ',' or ']'")


def test_chat_without_a_target_says_what_to_give(capsys):
    line = one_line_error(*run_cli(capsys, "chat"))
    assert line.startswith("error: chat: what to talk to? give a TARGET (a run directory") and "not both" not in line
    assert "not both" in one_line_error(*run_cli(capsys, "chat", "x", "--adapter", "a=b"))
    assert "-p is empty or whitespace only" in one_line_error(*run_cli(capsys, "chat", "x", "-p", "  \t"))


def test_chat_on_a_classifier_run_says_it_is_a_classifier(capsys, tmp_path):
    from tunelab.config import dump_config, load_config

    rows = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}])
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    config = load_config(None, [f"data.train={rows}", "task=classify", "model=tiny-random-bert"])
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "summary.json").write_text("{}")
    line = one_line_error(*run_cli(capsys, "chat", str(run_dir), "-p", "hello"))
    assert f"{run_dir}: this run is a sequence classifier (task classify), not a model that writes replies" in line


def test_data_check_shows_labels_unambiguously(capsys, tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(4)] +
                       [{"text": "row 9", "label": "1"}])
    assert main(["data", "check", str(path), "--model", "tiny-random-llama"]) == 0
    out = capsys.readouterr().out
    assert 'labels: 0 on 2 rows (40%), 1 on 2 rows (40%), "1" on 1 row (20%)' in out


def test_a_whitespace_only_prompt_is_rejected_and_an_empty_one_kept(capsys, tmp_path):
    rows = [{"prompt": "   ", "completion": "a"}, {"prompt": "", "completion": "b"},
            {"messages": [{"role": "user", "content": " \n"}, {"role": "assistant", "content": "c"}]}]
    path = write_jsonl(tmp_path / "p.jsonl", rows[:2])
    assert main(["data", "check", str(path), "--model", "tiny-random-llama"]) == 1
    out = capsys.readouterr().out
    assert f'{path}:1: field "prompt": whitespace only; write "" for none' in out and "1 kept, 1 rejected" in out
    chat = write_jsonl(tmp_path / "c.jsonl", rows[2:])
    assert main(["data", "check", str(chat), "--model", "tiny-random-llama"]) == 1
    assert 'field "messages[0].content": whitespace only' in capsys.readouterr().out
