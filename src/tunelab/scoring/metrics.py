"""Metrics by name: a registry the config's `eval.metrics` picks from, plus `module:function` user metrics.

Every generation metric takes the list of answers and the list of references and returns one number
in [0, 1], and says how it is built from per-row counts (`units`, see scoring/rows.py), which is what
its interval resamples. `perplexity` comes from the held-out loss, which every evaluation computes anyway.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from tunelab.errors import ConfigError
from tunelab.scoring.rows import OfSums, RowValues, named, ratio

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

Corpus = Callable[[list[str], list[str]], float]
Units = Callable[[list[str], list[str]], tuple[np.ndarray, OfSums]]  # per-row counts and the metric of their sum


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    compute: Corpus | None  # None: read from the held-out loss instead of from generations
    percent: bool = True
    higher_is_better: bool = True
    compared: bool = True  # False: the uncertainty of another metric, not a row of its own in before/after tables
    units: Units | None = None  # each row's counts, for the metric's interval (None: no per-row form)
    outcomes: bool = False  # the share of rows with a 0/1 outcome: compared by McNemar's test


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation or articles, single spaces."""
    text = _ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower()))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer equals the reference after trimming surrounding whitespace.

    Strict on purpose: for structured outputs a changed quote or brace is a wrong answer.
    """
    return float(prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over normalised words."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), from Google's rouge-score."""
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


def label_accuracy(prediction: str, reference: str) -> float:
    """Classification accuracy: the normalised answer equals the normalised label."""
    return float(normalize(prediction) == normalize(reference))


def macro_f1(predictions: list[str], references: list[str]) -> float:
    """Mean over the reference labels of each label's F1 (answers outside the labels count as wrong)."""
    from sklearn.metrics import f1_score  # imported here: seconds of start-up that only classification needs

    refs = [normalize(r) for r in references]
    if not refs:
        return 0.0
    return float(f1_score(refs, [normalize(p) for p in predictions], labels=sorted(set(refs)), average="macro",
                          zero_division=0.0))


def entity_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL rules) over rows of space-separated BIO tags:
    an entity counts only when its type and both boundaries match."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if not references:
        return {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}
    truth, guess = [r.split() for r in references], [p.split() for p in predictions]
    return {name: float(score(truth, guess, zero_division=0)) for name, score in
            (("entity_precision", precision_score), ("entity_recall", recall_score), ("entity_f1", f1_score))}


def entity_metric(name: str) -> Corpus:
    def corpus(predictions: list[str], references: list[str]) -> float:
        return entity_scores(predictions, references)[name]

    corpus.__name__ = name
    return corpus


def entity_of_sums(name: str) -> OfSums:
    """seqeval's micro precision, recall or F1 of summed (found and right, found, expected) entity counts."""
    return {"entity_f1": entity_f1_of_sums, "entity_precision": entity_precision_of_sums,
            "entity_recall": entity_recall_of_sums}[name]


def _share(right: np.ndarray, below: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(below > 0, right / np.where(below > 0, below, 1), 0.0)


@named
def entity_f1_of_sums(sums: np.ndarray) -> np.ndarray:
    return _share(2 * sums[..., 0], sums[..., 1] + sums[..., 2])


@named
def entity_precision_of_sums(sums: np.ndarray) -> np.ndarray:
    return _share(sums[..., 0], sums[..., 1])


@named
def entity_recall_of_sums(sums: np.ndarray) -> np.ndarray:
    return _share(sums[..., 0], sums[..., 2])


def entity_units(name: str) -> Units:
    """Per row (entities found and right, found, expected), seqeval's entities; the metric of their sums is
    seqeval's micro precision, recall or F1."""
    def units(predictions: list[str], references: list[str]) -> tuple[np.ndarray, OfSums]:
        from seqeval.metrics.sequence_labeling import get_entities

        rows = []
        for prediction, reference in zip(predictions, references):
            found, expected = set(get_entities(prediction.split())), set(get_entities(reference.split()))
            rows.append((len(found & expected), len(found), len(expected)))
        return np.asarray(rows, dtype=float).reshape(-1, 3), entity_of_sums(name)

    return units


@named
def macro_f1_of_sums(sums: np.ndarray) -> np.ndarray:
    """The mean of the labels' F1 from summed (true positive, false positive, false negative) per label, the
    three blocks of `macro_f1_units`' columns."""
    labels = sums.shape[-1] // 3
    if not labels:
        return np.zeros(sums.shape[:-1])
    sums = sums.reshape(*sums.shape[:-1], 3, labels)
    return _share(2 * sums[..., 0, :], 2 * sums[..., 0, :] + sums[..., 1, :] + sums[..., 2, :]).mean(-1)


def macro_f1_units(predictions: list[str], references: list[str]) -> tuple[np.ndarray, OfSums]:
    """Per row and reference label (true positive, false positive, false negative); the metric of their sums
    is the mean of the labels' F1, as `macro_f1` computes it."""
    labels = sorted({normalize(r) for r in references})
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(references), 3, len(labels)))
    for row, (prediction, reference) in enumerate(zip(map(normalize, predictions), map(normalize, references))):
        if prediction == reference:
            counts[row, 0, index[reference]] = 1
        else:
            counts[row, 2, index[reference]] = 1
            if prediction in index:
                counts[row, 1, index[prediction]] = 1
    return counts.reshape(len(references), -1), macro_f1_of_sums


def parse_json(text: str) -> Any:
    """The answer as JSON, or None when it is not valid JSON."""
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def json_valid(prediction: str, reference: str) -> float:
    return float(parse_json(prediction) is not None)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included: true, 1 and 1.0 differ (Python's == calls them equal)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def json_fields(prediction: str, reference: str) -> float:
    """Share of the reference's fields that the answer reproduces exactly: an object's keys, an array's
    positions (the answer must be the same kind of container, else 0). A reference with no fields (a
    scalar, an empty container, not JSON) is scored by exact match."""
    want, got = parse_json(reference), parse_json(prediction)
    if not isinstance(want, (dict, list)) or not want:
        return exact_match(prediction, reference)
    if type(got) is not type(want):
        return 0.0
    if isinstance(want, list):
        return sum(i < len(got) and same_json(got[i], value) for i, value in enumerate(want)) / len(want)
    return sum(key in got and same_json(got[key], value) for key, value in want.items()) / len(want)


def mean_of(per_example: Callable[[str, str], float]) -> Corpus:
    def corpus(predictions: list[str], references: list[str]) -> float:
        if not predictions:
            return 0.0
        return sum(float(per_example(p, r)) for p, r in zip(predictions, references)) / len(predictions)

    corpus.__name__ = getattr(per_example, "__name__", "metric")
    return corpus


def per_row(per_example: Callable[[str, str], float]) -> Units:
    """Units of a mean over rows: each row's (value, 1)."""
    def units(predictions: list[str], references: list[str]) -> tuple[np.ndarray, OfSums]:
        values = [float(per_example(p, r)) for p, r in zip(predictions, references)]
        return RowValues.means(list(range(len(values))), values).units, ratio

    return units


def mean_metric(name: str, label: str, per_example: Callable[[str, str], float], percent: bool = True,
                outcomes: bool = False) -> Metric:
    """A metric that averages a per-answer score over rows (`outcomes`: each score 0 or 1)."""
    return Metric(name, label, mean_of(per_example), percent=percent, units=per_row(per_example), outcomes=outcomes)


for _metric in (
    mean_metric("exact_match", "exact match", exact_match, outcomes=True),
    mean_metric("token_f1", "token F1", token_f1),
    mean_metric("rouge_l", "ROUGE-L", rouge_l),
    mean_metric("accuracy", "accuracy", label_accuracy, outcomes=True),
    Metric("macro_f1", "macro F1", macro_f1, units=macro_f1_units),
    mean_metric("json_valid", "valid JSON", json_valid, outcomes=True),
    mean_metric("json_fields", "JSON fields", json_fields),
    Metric("perplexity", "perplexity", None, percent=False, higher_is_better=False),
    Metric("entity_f1", "entity F1", entity_metric("entity_f1"), units=entity_units("entity_f1")),
    Metric("entity_precision", "entity precision", entity_metric("entity_precision"),
           units=entity_units("entity_precision")),
    Metric("entity_recall", "entity recall", entity_metric("entity_recall"), units=entity_units("entity_recall")),
    # Retrieval over held-out embeddings: computed by the task from similarities, not from answers.
    Metric("recall_at_1", "recall@1", None),
    Metric("recall_at_10", "recall@10", None),
    Metric("mrr", "MRR", None),
    # Scored by preference and RL tasks from rewards, not from generations against references.
    Metric("pairwise_accuracy", "pairwise accuracy", None),
    Metric("reward_margin", "reward margin", None, percent=False),
    Metric("mean_reward", "mean reward", None, percent=False),
):
    register_metric(_metric)

LOSS_ONLY = {m.name: m for m in (
    Metric("eval_loss", "eval loss", None, percent=False, higher_is_better=False),
    Metric("eval_loss_se", "eval loss SE", None, percent=False, higher_is_better=False, compared=False))}


def pair_wins(chosen: list[float], rejected: list[float]) -> list[float]:
    """Each pair's outcome: 1 when the chosen reward is higher, 0 when lower, 1/2 for a tie (a coin's
    expected score: a model that cannot tell the two apart scores chance, 50%, not 0%)."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]


def pairwise_scores(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Share of pairs won (a tie counts one half, `pair_wins`) and the mean margin."""
    if not chosen:
        return {"pairwise_accuracy": 0.0, "reward_margin": 0.0}
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"pairwise_accuracy": sum(pair_wins(chosen, rejected)) / len(margins),
            "reward_margin": sum(margins) / len(margins)}


def pairwise_rows(keys: list[int], chosen: list[float], rejected: list[float]) -> dict[str, RowValues]:
    """pairwise_accuracy and reward_margin pair by pair."""
    return {"pairwise_accuracy": RowValues.means(keys, pair_wins(chosen, rejected)),
            "reward_margin": RowValues.means(keys, [c - r for c, r in zip(chosen, rejected)])}


def describe(name: str) -> Metric:
    """The registered metric, or a plain description of a user metric or an unknown key."""
    return METRICS.get(name) or LOSS_ONLY.get(name) or Metric(name, name, None, percent=False)


def check_metric_name(name: str) -> str:
    """Config-time check: a registered name, or module:function (imported when the run starts)."""
    if name in METRICS or re.fullmatch(r"[\w.]+:\w+", name):
        return name
    close = difflib.get_close_matches(name, list(METRICS), n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise ValueError(f'expected one of {"|".join(sorted(METRICS))} or module:function, got "{name}"{hint}')


def resolve_metric(name: str) -> Metric:
    """The metric for a name; a `module:function` one is imported and averaged per example."""
    if name in METRICS:
        return METRICS[name]
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f'eval.metrics: cannot load user metric "{name}": {err}') from None
    if not callable(fn):
        raise ConfigError(f'eval.metrics: "{name}" is not a function(prediction, reference) -> float')
    return mean_metric(name, name, fn, percent=False)


def generation_scores(names: list[str], answers: list[str], references: list[str]) -> dict[str, float]:
    """Every named generation metric over the answers; loss-based names are left to the caller."""
    scores = {}
    for name in names:
        metric = resolve_metric(name)
        if metric.compute is not None:
            scores[name] = float(metric.compute(answers, references))
    return scores


def generation_rows(names: list[str], answers: list[str], references: list[str],
                    keys: list[int]) -> dict[str, RowValues]:
    """Each named generation metric row by row (keyed by the rows' lines), for its interval."""
    out = {}
    for name in names:
        metric = resolve_metric(name)
        if metric.compute is not None and metric.units is not None:
            units, of_sums = metric.units(answers, references)
            out[name] = RowValues(list(keys), units, of_sums, metric.outcomes)
    return out


OTHER = "(other)"  # normalize() strips punctuation, so no normalised answer can equal it


def confusion(predictions: list[str], references: list[str]) -> tuple[list[str], list[list[int]]]:
    """Labels (the references', then "other") and counts[reference][prediction], for classification."""
    from sklearn.metrics import confusion_matrix

    labels = sorted({normalize(r) for r in references})
    known = set(labels)
    answers = [p if p in known else OTHER for p in map(normalize, predictions)]
    counts = confusion_matrix([normalize(r) for r in references], answers, labels=labels + [OTHER])
    return labels + [OTHER], counts[:-1].tolist()  # no reference is "other": its row is all zeros


# Which metrics mean something for a set of references.
JSON_METRICS = ("json_valid", "json_fields")
LABEL_METRICS = ("accuracy", "macro_f1")
MAX_LABELS = 20  # more distinct answers than this reads as free text, not classes
MAX_LABEL_CHARS = 40


def fit_metrics(names: list[str], references: list[str], explicit: bool) -> tuple[list[str], list[str]]:
    """The metrics that mean something for these references, and a message for each change or hint.

    JSON metrics are left out unless at least half the references are JSON objects or arrays (a
    one-word label is never valid JSON). Label-like references get accuracy and macro F1 first in
    the list when the list is the task's default; an explicit eval.metrics is kept and only hinted.
    """
    if not references:
        return names, []
    messages = []
    structured = sum(isinstance(parse_json(r), (dict, list)) for r in references)
    unfit = [n for n in names if n in JSON_METRICS] if 2 * structured < len(references) else []
    if unfit:
        names = [n for n in names if n not in unfit]
        messages.append(f"left out {', '.join(unfit)}: {len(references) - structured} of {len(references)} "
                        "references are not JSON objects or arrays")
    labels = label_set(references)
    missing = [n for n in LABEL_METRICS if n not in names]
    if labels and missing:
        shown = f"{len(labels)} distinct labels ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
        if explicit:
            messages.append(f"the references look like class labels, {shown}; add {', '.join(missing)} to "
                            "eval.metrics to score them as a classification")
        else:
            names = [*missing, *names]
            messages.append(f"scoring as a classification ({', '.join(missing)} added): the references are {shown}")
    return names, messages


def label_set(references: list[str]) -> list[str]:
    """The sorted labels when references are a few short one-line values each seen twice on average, else []."""
    labels = sorted({r.strip() for r in references})
    fits = (len(labels) <= MAX_LABELS and 2 * len(labels) <= len(references)
            and all(label and "\n" not in label and len(label) <= MAX_LABEL_CHARS for label in labels))
    return labels if fits else []
