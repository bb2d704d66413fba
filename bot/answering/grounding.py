"""Is each sentence of an answer said by the passages it was given (or by the asker's facts)?

A sentence is supported when one piece of the passages (a sentence, list item or table row,
bot/answering/evidence.py) covers most of its content words and means much the same (MiniLM
cosine), and every number in it appears in the passages or facts: a 135M model's favourite
mistake is a number from nowhere ("The answer is: 12"). The support of each sentence is recorded
on the turn (`support`), shown in the console and counted by the benchmarks and the gate.

Why lexical and embedding support and not an NLI model: no NLI or cross-encoder weights ship in
a PyPI package we could verify here, and weights are never downloaded at run time. The two
thresholds below were chosen on how gold answers score against their own passage versus other
passages of the same manual (`bench/support_calibration.py`), not on the answers being judged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bot.answering.evidence import WORD, Piece, content_terms, numbers_in, split_sentences

#: A sentence is supported when its best piece reaches this blend of word coverage and cosine.
SUPPORT_MIN = 0.55
#: ... or when the passages together hold nearly all its words and the best piece is on topic.
JOINT_COVERAGE_MIN = 0.85
JOINT_COSINE_MIN = 0.5
COVERAGE_WEIGHT = 0.6

CITATION = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class SentenceSupport:
    """One answer sentence and what supports it. `passage` is the number of the passage whose
    piece supports it best (0: the asker's facts; None: no claim to check)."""

    sentence: str
    supported: bool
    score: float
    passage: int | None
    evidence: str
    claims: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "sentence": self.sentence,
            "supported": self.supported,
            "score": round(self.score, 3),
            "passage": self.passage,
            "evidence": self.evidence[:300],
            "claims": self.claims,
        }


def answer_sentences(text: str) -> list[str]:
    """An answer split into sentences and list lines (citation marks stay on their sentence)."""
    sentences = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+", "", line).strip()
        if line:
            sentences.extend(split_sentences(line))
    return sentences


def without_citations(sentence: str) -> str:
    return CITATION.sub("", sentence).strip()


def check_support(
    sentences: Sequence[str],
    sentence_vectors: np.ndarray,
    pieces: Sequence[Piece],
    piece_vectors: np.ndarray,
) -> list[SentenceSupport]:
    """The support of each sentence (vectors are unit length, one row per sentence / piece)."""
    piece_terms = [set(content_terms(p.embed_text)) for p in pieces]
    everything: set[str] = set().union(*piece_terms) if piece_terms else set()
    known_numbers: set[str] = set()
    for piece in pieces:
        known_numbers |= numbers_in(piece.embed_text)
    results = []
    for row, sentence in enumerate(sentences):
        bare = without_citations(sentence)
        terms = set(content_terms(bare))
        if not terms:
            results.append(SentenceSupport(sentence, True, 1.0, None, "", claims=False))
            continue
        if not pieces:
            results.append(SentenceSupport(sentence, False, 0.0, None, ""))
            continue
        cosines = piece_vectors @ sentence_vectors[row]
        coverage = np.array([len(terms & t) / len(terms) for t in piece_terms])
        blend = COVERAGE_WEIGHT * coverage + (1 - COVERAGE_WEIGHT) * np.clip(cosines, 0.0, 1.0)
        best = int(np.argmax(blend))
        joint = len(terms & everything) / len(terms)
        # Every number must be in the piece that supports the sentence, not just somewhere:
        # "In Germany you get 25 days" is not supported by the Portugal row's 25.
        invented = numbers_in(bare) - known_numbers or numbers_in(bare) - numbers_in(pieces[best].embed_text)
        # Stop words are not compared, so "you do not need MFA" would match "you need MFA".
        flipped = _negated(bare) != _negated(pieces[best].text)
        supported = (
            not invented
            and not flipped
            and (
                blend[best] >= SUPPORT_MIN or (joint >= JOINT_COVERAGE_MIN and float(cosines.max()) >= JOINT_COSINE_MIN)
            )
        )
        results.append(
            SentenceSupport(sentence, bool(supported), float(blend[best]), pieces[best].passage, pieces[best].text)
        )
    return results


NEGATIONS = frozenset(
    "not no never nor cannot can't don't doesn't didn't isn't aren't wasn't weren't won't "
    "shouldn't mustn't couldn't wouldn't without none nothing neither".split()
)


def _negated(text: str) -> bool:
    """Whether a sentence says something is not so (compared between a sentence and its support)."""
    words = {w.replace("’", "'") for w in WORD.findall(text.lower())}
    return bool(words & NEGATIONS) or "n't" in text.lower()


def supported_share(support: Sequence[SentenceSupport | dict[str, Any]]) -> float | None:
    """Share of the sentences that make a claim which are supported (None: no claim at all)."""
    flags = []
    for s in support:
        data = s.to_dict() if isinstance(s, SentenceSupport) else s
        if data.get("claims", True):
            flags.append(bool(data.get("supported")))
    return sum(flags) / len(flags) if flags else None
