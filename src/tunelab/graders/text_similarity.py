"""text_similarity: how close the rendered input is to the reference, by one of OpenAI's metrics.

- fuzzy_match: difflib's SequenceMatcher ratio, 2 x matched characters / both lengths (fuzzywuzzy's
  `fuzz.ratio` / 100; rapidfuzz, which OpenAI names, is not a dependency here);
- bleu: NLTK's sentence BLEU (1- to 4-grams, uniform weights, Chen & Cherry smoothing 1 so that a short answer
  without a 4-gram match is not 0), gleu: NLTK's sentence GLEU, meteor: NLTK's METEOR, which needs the WordNet
  data (never downloaded at run time: refused where it is not installed); all three on word and punctuation
  tokens (NLTK's wordpunct_tokenize, no data needed);
- rouge_1 .. rouge_5, rouge_l: Google's rouge-score F-measure (its own tokenizer: lowercase alphanumerics);
- cosine: cosine similarity of the bundled all-MiniLM-L6-v2 sentence embeddings (mean pooled), in [-1, 1].
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Callable
from typing import Any

from tunelab.graders.base import Graded, GraderType, Options, check_template, fail, number, one_of, \
    register_grader, rendered

EMBEDDER = "minilm-l6"
ROUGE = {**{f"rouge_{n}": f"rouge{n}" for n in range(1, 6)}, "rouge_l": "rougeL"}
METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", *ROUGE)


def check(spec: dict[str, Any], where: str) -> None:
    check_template(spec, "input", where)
    check_template(spec, "reference", where)
    one_of(f"{where}.evaluation_metric", spec["evaluation_metric"], METRICS)
    if spec["evaluation_metric"] == "meteor" and not has_wordnet():
        fail(f"{where}.evaluation_metric", "meteor needs NLTK's WordNet data, which is not installed here and is "
             "never downloaded at run time; install it once with `python -m nltk.downloader wordnet`, or choose "
             "another metric (bleu, gleu, rouge_l, fuzzy_match, cosine)")
    if "pass_threshold" in spec:
        number(f"{where}.pass_threshold", spec["pass_threshold"])


def has_wordnet() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True


def fuzzy_match(text: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, text, reference, autojunk=False).ratio()


def _tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text)


def bleu(text: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    with warnings.catch_warnings():  # NLTK warns on every n-gram order without a match: a 0 says it already
        warnings.simplefilter("ignore")
        return float(sentence_bleu([_tokens(reference)], _tokens(text),
                                   smoothing_function=SmoothingFunction().method1))


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([_tokens(reference)], _tokens(text)))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([_tokens(reference)], _tokens(text)))


@functools.cache
def _rouge(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def rouge(kind: str) -> Callable[[str, str], float]:
    return lambda text, reference: float(_rouge(kind).score(reference, text)[kind].fmeasure)


PAIRWISE: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor,
    **{metric: rouge(kind) for metric, kind in ROUGE.items()},
}


@functools.cache
def encoder() -> tuple[Any, Any]:
    """The bundled all-MiniLM-L6-v2 (tokenizer, model), loaded once through tunelab's loader."""
    from tunelab.models.loading import LoadRules, ModelSpec, load_pair
    from tunelab.models.registry import resolve_model

    tokenizer, model = load_pair(resolve_model(EMBEDDER), ModelSpec("embedding"), LoadRules())
    return tokenizer, model.eval()


def cosine(pairs: list[tuple[str, str]]) -> list[float]:
    """Each pair's cosine of sentence embeddings (mean pooled, unit length: scoring.similar.embed, as retrieval
    ranks training rows)."""
    from tunelab.scoring.similar import EMBED_MAX_LENGTH, embed

    if not pairs:
        return []
    tokenizer, model = encoder()
    vectors = embed(model, tokenizer, [t for pair in pairs for t in pair], EMBED_MAX_LENGTH, 32)
    return (vectors[0::2] * vectors[1::2]).sum(-1).clamp(-1.0, 1.0).tolist()


def grade(spec: dict[str, Any], samples: list[dict[str, Any]], items: list[Any], options: Options) -> list[Graded]:
    texts = [rendered([spec["input"], spec["reference"]], s, i) for s, i in zip(samples, items)]
    pairs = [tuple(t) for t in texts if not isinstance(t, Graded)]
    metric = spec["evaluation_metric"]
    scores = iter(cosine(pairs) if metric == "cosine" else [PAIRWISE[metric](*pair) for pair in pairs])
    return [t if isinstance(t, Graded) else Graded(next(scores)) for t in texts]


register_grader(GraderType("text_similarity", ("input", "reference", "evaluation_metric"), ("pass_threshold",),
                           check, grade))
