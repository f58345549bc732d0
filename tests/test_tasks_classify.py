"""The classify task's linear probe: fitted on a seeded sample that keeps every label, whatever the file order."""

from __future__ import annotations

from collections import Counter

from tests.conftest import write_jsonl
from tunelab.config import load_config
from tunelab.data import load_dataset
from tunelab.events import Events
from tunelab.models import resolve_model
from tunelab.models.loading import LoadRules, load_pair
from tunelab.tasks import TASKS
from tunelab.tasks.classify import stratified_sample


def test_stratified_sample_keeps_each_labels_share_and_follows_the_seed():
    labels = [0] * 60 + [1] * 30 + [2] * 10  # sorted by label, as many files are
    picked = stratified_sample(labels, 20, seed=1)
    assert Counter(labels[i] for i in picked) == {0: 12, 1: 6, 2: 2}
    assert picked == stratified_sample(labels, 20, seed=1) != stratified_sample(labels, 20, seed=2)
    assert Counter(labels[i] for i in stratified_sample(labels, 3, seed=1)) == {0: 1, 1: 1, 2: 1}
    assert stratified_sample(labels, 500, seed=1) == list(range(100))


def test_linear_probe_sees_every_class_of_a_file_sorted_by_label(tmp_path):
    rows = [{"text": f"item {i} is {colour}", "label": colour} for colour in ("blue", "green", "red") for i in range(20)]
    path = write_jsonl(tmp_path / "sorted.jsonl", rows)
    config = load_config(None, [f"data.train={path}", "task=classify", "model=tiny-random-llama", "method=full",
                                "classify.probe_rows=12", "train.epochs=1", "train.max_length=32"])
    data, task = load_dataset(path, "auto"), TASKS["classify"]
    tokenizer, model = load_pair(resolve_model(config.model), task.model_spec(config, data), LoadRules())
    prepared = task.prepare(config, tokenizer, data, data, Events())
    probe = task.baselines(model, tokenizer, data, data, prepared, config, Events())["linear_probe"]
    assert probe.details == {"train_rows": 12, "train_labels": {"blue": 4, "green": 4, "red": 4}}
