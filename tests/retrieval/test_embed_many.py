"""`Embedder.embed_many`: the vectors of passage sentences, cached per text across turns."""

from __future__ import annotations

import numpy as np

from retrieval.cache import MemoryCache
from retrieval.embeddings import Embedder


async def test_cached_vectors_are_the_vectors_and_only_misses_are_embedded(embedder: Embedder) -> None:
    cache = MemoryCache()
    cached = Embedder(embedder.model_ref, cache=cache)
    cached._model = embedder._load()  # the session's loaded weights
    texts = ["Reset your password at id.northwind.example.", "Badges are printed at reception."]
    first = await cached.embed_many(texts)
    assert first.shape == (2, cached.dim)
    assert np.allclose(first, embedder.embed(texts), atol=1e-6)
    assert len(await cache.keys("emb:*")) == 2
    again = await cached.embed_many([texts[1], "A new sentence.", texts[0]])
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    assert len(await cache.keys("emb:*")) == 3
    assert (await cached.embed_many([])).shape == (0, cached.dim)
