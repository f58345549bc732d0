"""Every YAML block in the README and docs/ is what it says: a search space `tunelab sweep` accepts, or a run
config that validates. The README's space also runs (one trial on the tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES, REPO
from tunelab.config import load_config, load_raw
from tunelab.experiments.space import load_space

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BASE = [f"data.train={EXAMPLES / 'quickstart' / 'train.jsonl'}"]


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        for i, text in enumerate(re.findall(r"^```yaml\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S)):
            blocks.append((f"{doc.name}#{i}", text))
    return blocks


def is_space(data: dict) -> bool:
    return all("." in str(key) for key in data)


def test_the_docs_have_yaml_blocks_to_check():
    names = [name for name, _ in yaml_blocks()]
    assert "README.md#0" in names and any(name.startswith("compare-sweep.md") for name in names)


@pytest.mark.parametrize("name, text", yaml_blocks(), ids=[name for name, _ in yaml_blocks()])
def test_every_yaml_block_parses_and_validates(tmp_path, name, text):
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and data, name
    path = tmp_path / "block.yaml"
    path.write_text(text, encoding="utf-8")
    if is_space(data):
        dims = load_space(path, load_raw(None, BASE))
        assert [d.key for d in dims] == list(data)
    else:
        load_config(path, [] if "data" in data else BASE)


def test_the_readmes_search_space_runs(tmp_path, chat_rows):
    from tests.conftest import write_jsonl
    from tests.test_experiments_sweep import QUICK
    from tunelab.experiments.sweep import SweepOptions, sweep

    space = tmp_path / "space.yaml"
    space.write_text(dict(yaml_blocks())["README.md#0"], encoding="utf-8")
    train, held = write_jsonl(tmp_path / "t.jsonl", chat_rows[:20]), write_jsonl(tmp_path / "e.jsonl", chat_rows[20:])
    summary = sweep(load_raw(None, [f"data.train={train}", f"data.eval={held}", *QUICK]),
                    SweepOptions(space, trials=1, out_dir=tmp_path / "sw", metric="eval_loss"))
    assert summary["states"]["complete"] == 1
    assert summary["space"]["train.learning_rate"] == "0.0001 to 0.003 (log scale)"
