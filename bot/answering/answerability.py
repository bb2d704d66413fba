"""Do the passages answer the question? One score, 0-1, checked before anything is written.

Three signals, each 0-1, averaged with equal weights: how well the best sentence or row of the
passages matches the question (bot/answering/quoting.py), how similar the best passage is to
the question (the search's confidence), and how many of the question's own words the passages
contain at all. The last one catches what the other two miss: a question about something the
documents never mention ("is the toolchain available in South America?") still lands on
passages about the toolchain, and reads as a close match, but "South America" is nowhere in
them. Equal weights, not weights fitted to a benchmark: on MTRAG's dev turns the three together
separate the turns the documents answer from those they do not better than any one of them
(bench/answer_quality.py reports it), and the threshold is one setting, `answerable_min`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.answering.evidence import content_terms
from retrieval.records import Hit


def question_coverage(question: str, hits: Sequence[Hit]) -> float:
    """The share of the question's content words that appear in the passages (1.0 for a
    question with none)."""
    asked = set(content_terms(question))
    if not asked:
        return 1.0
    seen: set[str] = set()
    for hit in hits:
        seen |= set(content_terms(f"{hit.chunk.title} {hit.chunk.heading} {hit.chunk.text}"))
    return len(asked & seen) / len(asked)


def answerability(relevance: float, confidence: float, coverage: float) -> float:
    """The mean of the three signals, each clipped to 0-1."""
    return sum(min(1.0, max(0.0, v)) for v in (relevance, confidence, coverage)) / 3
