"""Scoring answers against reference answers: token F1 and ROUGE-L, the two figures the
benchmarks and the retraining gate compare.

Both follow the usual definitions (SQuAD's token F1 on normalised words; ROUGE-L as the F-measure
of the longest common subsequence of words), written out here because they are a dozen lines
each and the libraries that carry them pull in a whole NLP toolkit.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = ARTICLES.sub(" ", text.lower().translate(PUNCTUATION))
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_of(metric, prediction: str, references: Iterable[str]) -> float:  # noqa: ANN001
    """The best score against any of several acceptable references."""
    return max((metric(prediction, r) for r in references), default=0.0)
