"""Fusing dense and lexical rankings into one.

Relative-score fusion (min-max normalise each list, weight, add) is what Weaviate's hybrid
search does by default, so the embedded store and Weaviate rank alike. On the emanual
benchmark it beat reciprocal-rank fusion (see README, Performance).
"""

from __future__ import annotations

from collections.abc import Sequence

from retrieval.records import Hit


def _normalised(hits: Sequence[Hit]) -> dict[str, float]:
    if not hits:
        return {}
    scores = [h.score for h in hits]
    low, high = min(scores), max(scores)
    span = high - low
    return {h.chunk.id: ((h.score - low) / span if span > 0 else 1.0) for h in hits}


def relative_score_fusion(dense: Sequence[Hit], lexical: Sequence[Hit], alpha: float) -> list[Hit]:
    """Hits from both lists, scored `alpha * dense + (1 - alpha) * lexical`, best first."""
    chunks = {h.chunk.id: h.chunk for h in (*lexical, *dense)}
    dense_n, lexical_n = _normalised(dense), _normalised(lexical)
    scored = [
        Hit(chunk=chunks[cid], score=alpha * dense_n.get(cid, 0.0) + (1 - alpha) * lexical_n.get(cid, 0.0))
        for cid in chunks
    ]
    scored.sort(key=lambda h: (-h.score, h.chunk.id))
    return scored
