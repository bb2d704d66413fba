"""Fusing dense and lexical rankings into one.

Relative-score fusion (min-max normalise each list, weight, add) is what Weaviate's hybrid
search does by default, so the embedded store and Weaviate rank alike. On the emanual
benchmark it beat reciprocal-rank fusion (see README, Performance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from retrieval.records import Hit


def _normalised(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {cid: ((score - low) / span if span > 0 else 1.0) for cid, score in scores.items()}


def fuse_scores(dense: Mapping[str, float], lexical: Mapping[str, float], alpha: float) -> list[tuple[str, float]]:
    """Ids from both rankings, scored `alpha * dense + (1 - alpha) * lexical` after min-max
    normalising each, best first (ties by id, so the order is stable)."""
    dense_n, lexical_n = _normalised(dense), _normalised(lexical)
    fused = [(cid, alpha * dense_n.get(cid, 0.0) + (1 - alpha) * lexical_n.get(cid, 0.0))
             for cid in {**lexical_n, **dense_n}]
    fused.sort(key=lambda pair: (-pair[1], pair[0]))
    return fused


def relative_score_fusion(dense: Sequence[Hit], lexical: Sequence[Hit], alpha: float) -> list[Hit]:
    """Hits from both lists, fused by `fuse_scores`."""
    chunks = {h.chunk.id: h.chunk for h in (*lexical, *dense)}
    fused = fuse_scores({h.chunk.id: h.score for h in dense}, {h.chunk.id: h.score for h in lexical}, alpha)
    return [Hit(chunk=chunks[cid], score=score) for cid, score in fused]
