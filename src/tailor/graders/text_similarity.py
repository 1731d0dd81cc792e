"""`text_similarity`: how close the input is to the reference, by one of OpenAI's metrics.

OpenAI's graders guide names two of its implementations: fuzzy_match "using rapidfuzz" and
cosine over text-embedding-3-large embeddings. It does not name the others, so tailor uses the
standard packages, each on the input as the hypothesis and the reference as the only reference:

- fuzzy_match: rapidfuzz `fuzz.ratio` / 100 (normalised Indel similarity of the two strings).
- bleu: NLTK `sentence_bleu`, up to 4-grams, uniform weights, Chen & Cherry smoothing method 1
  (so a short answer without a matching 4-gram is not scored 0), on `wordpunct_tokenize` tokens.
- gleu: NLTK `sentence_gleu` (Google BLEU, Wu et al. 2016), 1- to 4-grams, same tokens.
- meteor: NLTK `meteor_score` (alpha 0.9, beta 3, gamma 0.5): exact and Porter-stem matches,
  plus WordNet synonyms when NLTK's wordnet corpus is installed (nltk.download("wordnet"));
  without it the synonym stage matches nothing.
- rouge_1 ... rouge_5, rouge_l: Google's `rouge-score` package, the F-measure, no stemming.
- cosine: the cosine of tailor's embedding model's vectors (all-MiniLM-L6-v2, the one tailor
  index uses), since text-embedding-3-large is OpenAI's own.
"""

from __future__ import annotations

import time
import warnings

from tailor.graders import checks, result
from tailor.graders.string_check import render

METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
           "rouge_l", "cosine")


def check(g: dict, path: str) -> dict:
    return {"type": "text_similarity",
            "name": checks.string(g, "name", path, required=False, default="text_similarity"),
            "input": checks.string(g, "input", path, templated=True),
            "reference": checks.string(g, "reference", path, templated=True),
            "evaluation_metric": checks.choice(g, "evaluation_metric", path, METRICS)}


def grade(g: dict, scope: dict, ctx) -> dict:
    started = time.monotonic()
    text, reference = render(g["input"], scope), render(g["reference"], scope)
    metric = g["evaluation_metric"]
    embed = ctx.embed if ctx is not None else None
    return result.response(g, similarity(metric, text, reference, embed), started=started)


def similarity(metric: str, text: str, reference: str, embed=None) -> float:
    """The score of `text` against `reference` by `metric` (see the module's docstring)."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric == "cosine":
        return cosine(text, reference, embed)
    if metric.startswith("rouge_"):
        return rouge(metric, text, reference)
    from nltk.tokenize import wordpunct_tokenize

    hyp, ref = wordpunct_tokenize(text), wordpunct_tokenize(reference)
    if not hyp or not ref:
        return float(hyp == ref and metric != "meteor")  # nothing to count n-grams of
    with warnings.catch_warnings():  # NLTK warns about missing higher-order n-grams; the score says it
        warnings.simplefilter("ignore")
        if metric == "bleu":
            from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

            return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
        if metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            return float(sentence_gleu([ref], hyp))
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([ref], hyp, wordnet=_wordnet()))


def rouge(metric: str, text: str, reference: str) -> float:
    key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    return float(_scorer(key).score(reference, text)[key].fmeasure)


_scorers: dict = {}


def _scorer(key: str):
    if key not in _scorers:
        from rouge_score import rouge_scorer

        _scorers[key] = rouge_scorer.RougeScorer([key], use_stemmer=False)
    return _scorers[key]


def cosine(text: str, reference: str, embed=None) -> float:
    if embed is None:
        from tailor.rag.embed import Embedder

        embed = Embedder.load().encode
    a, b = embed([text, reference])
    return float(max(-1.0, min(1.0, float((a * b).sum()))))


class _NoSynonyms:
    """A WordNet that knows no word: METEOR's synonym stage then matches nothing."""

    def synsets(self, word, *args, **kwargs):
        return []


def _wordnet():
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except LookupError:  # the corpus is not installed (tailor never downloads at run time)
        return _NoSynonyms()
