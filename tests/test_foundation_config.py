"""Config: every wrong key or value fails before any model loads, naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from tunelab.config import describe_options, load_config
from tunelab.errors import ConfigError

BASE = ["data.train=x.jsonl"]


def error_of(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, [*BASE, *overrides])
    return str(info.value)


def test_defaults_and_overrides_are_typed():
    config = load_config(None, [*BASE, "train.learning_rate=1e-4", "train.epochs=2", "lora.target_modules=[q_proj,v_proj]"])
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.epochs == 2.0
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.method == "lora" and config.task == "auto"  # chosen from the data at run time


def test_unknown_key_suggests_the_close_match():
    message = error_of("train.learnig_rate=1e-4")
    assert message == 'config: unknown key "train.learnig_rate" (did you mean "learning_rate"?)'


def test_non_number_learning_rate_names_key_and_value():
    message = error_of("train.learning_rate=fast")
    assert message.startswith("config: train.learning_rate:")
    assert '"fast"' in message and "number" in message


def test_out_of_range_value_says_the_bound():
    assert "greater than or equal to 1" in error_of("train.batch_size=0")


def test_unknown_method_lists_the_registry_and_suggests():
    from tunelab.methods import METHODS

    message = error_of("method=lroa")
    assert f'expected one of {"|".join(sorted(METHODS))}, got "lroa" (did you mean "lora"?)' in message
    assert len(METHODS) >= 14 and "ia3" in message and "diff-pruning" in message


def test_missing_required_key():
    with pytest.raises(ConfigError, match='"data" is required'):
        load_config(None, [])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.epochs"])


def test_yaml_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data:\n  train: d/train.jsonl\n")
    config = load_config(path)
    assert config.data.train == tmp_path / "sub" / "d" / "train.jsonl"


def test_bad_yaml_and_wrong_top_level(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_task_and_format_must_agree():
    assert 'task "causal_lm" trains on text rows, not data.format "messages"' in \
        error_of("task=causal_lm", "data.format=messages")


def test_every_option_is_documented():
    rows = describe_options()
    keys = {key for key, _, _ in rows}
    assert {"data.train", "train.learning_rate", "lora.r", "output_dir"} <= keys
    assert all(help_text for _, _, help_text in rows)


def test_every_shipped_example_config_loads():
    from tests.conftest import EXAMPLES

    for path in EXAMPLES.glob("*.yaml"):
        config = load_config(path)
        assert config.data.train.is_file(), path


def test_learning_rate_defaults_to_the_methods_own():
    assert load_config(None, [*BASE, "method=lora"]).train.learning_rate == pytest.approx(1e-3)
    assert load_config(None, [*BASE, "method=full"]).train.learning_rate == pytest.approx(2e-5)
    assert load_config(None, [*BASE, "method=full", "train.learning_rate=1e-4"]).train.learning_rate == 1e-4


def test_readme_config_table_is_the_config_models_own():
    import sys

    from tests.conftest import REPO
    from tunelab.config import options_markdown

    sys.path.insert(0, str(REPO / "scripts"))
    from readme_config import README, block

    assert block(README.read_text(encoding="utf-8")) == options_markdown(), \
        "README.md's config table is stale: run `python scripts/readme_config.py`"


def test_the_classify_example_runs_on_a_file_of_other_labels(tmp_path):
    """examples/classify.yaml pinned negative/mixed/positive, so a spam/ham file was refused at its first row."""
    from tests.conftest import EXAMPLES, write_jsonl
    from tunelab.tasks import get_task
    from tunelab.inputs import load_data, resolve

    rows = [{"text": f"{kind} message number {i} about offer {i * 13}", "label": kind}
            for kind in ("spam", "ham") for i in range(10)]
    train, held = write_jsonl(tmp_path / "t.jsonl", rows[2:18]), write_jsonl(tmp_path / "e.jsonl", rows[:2] + rows[18:])
    config = load_config(EXAMPLES / "classify.yaml",
                         [f"data.train={train}", f"data.eval={held}", "data.leakage_check=false"])
    data = load_data(config)
    complete = resolve(config, data)
    spec = get_task("classify").model_spec(complete, data.train)
    assert spec.options["id2label"] == {0: "ham", 1: "spam"} and complete.classify.labels == ["ham", "spam"]
