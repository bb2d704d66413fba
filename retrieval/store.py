"""The knowledge store: our small interface, and the URL that picks a backend.

Two backends implement it: `store_lancedb` (embedded, on disk) and `store_weaviate`."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from retrieval.fusion import relative_score_fusion
from retrieval.records import (
    Chunk,
    DocumentRecord,
    DocumentWrite,
    Hit,
    RankedHits,
    StoreStats,
    UserProfile,
)

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The store's server cannot be reached or refused the request."""


class KnowledgeStore(ABC):
    """Domain chunks (with access groups) and per-user context, searched by vector and text.

    Guarantees every backend keeps (the contract tests check them):
    - a search with `groups` never returns a chunk whose groups do not intersect them;
    - user facts of one user key are never returned for another;
    - `replace_documents` is idempotent and leaves a document either fully old or fully new;
    - a value given to `set_meta` is what `meta` returns, in this process and every later one.
    """

    dim: int

    # --- documents -------------------------------------------------------------------------
    @abstractmethod
    async def replace_documents(self, writes: Sequence[DocumentWrite]) -> None:
        """Make each document's chunks exactly the given ones."""

    @abstractmethod
    async def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Remove documents and all their chunks; returns how many documents existed."""

    @abstractmethod
    async def documents(self) -> dict[str, DocumentRecord]:
        """Every ingested document by id."""

    @abstractmethod
    async def chunks_of(self, doc_id: str) -> list[Chunk]:
        """A document's chunks in reading order."""

    # --- search ----------------------------------------------------------------------------
    @abstractmethod
    async def dense(self, vector: np.ndarray, k: int, groups: Sequence[str]) -> list[Hit]:
        """Nearest chunks by cosine similarity (score = similarity, in [-1, 1])."""

    @abstractmethod
    async def lexical(self, text: str, k: int, groups: Sequence[str]) -> list[Hit]:
        """Best chunks by BM25 (score = the backend's BM25 score)."""

    async def hybrid(
        self,
        text: str,
        vector: np.ndarray,
        k: int,
        groups: Sequence[str],
        alpha: float,
        candidates: int | None = None,
    ) -> RankedHits:
        """The `k` best of dense and lexical rankings (`candidates` deep each, default `k`)
        fused by relative scores; `alpha` weighs the dense side."""
        depth = max(k, candidates or k)
        dense, lexical = await asyncio.gather(self.dense(vector, depth, groups), self.lexical(text, depth, groups))
        fused = relative_score_fusion(dense, lexical, alpha)
        top = dense[0].score if dense else 0.0
        return RankedHits(hits=fused[:k], top_similarity=top)

    # --- users -----------------------------------------------------------------------------
    @abstractmethod
    async def put_user(self, profile: UserProfile, facts: Sequence[str], vectors: np.ndarray) -> None:
        """Replace a user's profile and context facts."""

    @abstractmethod
    async def get_user(self, key: str) -> UserProfile | None: ...

    @abstractmethod
    async def users(self) -> list[UserProfile]:
        """Every imported user, sorted by key (the web page's user picker lists them)."""

    @abstractmethod
    async def user_facts(self, key: str, vector: np.ndarray, k: int) -> list[str]:
        """This user's facts nearest to the question; never another user's."""

    @abstractmethod
    async def delete_user(self, key: str) -> int:
        """Remove a user's profile and facts; returns how many records were removed."""

    # --- housekeeping ----------------------------------------------------------------------
    @abstractmethod
    async def kb_version(self) -> int:
        """A number that grows whenever the knowledge base's content changes."""

    @abstractmethod
    async def bump_kb_version(self) -> int: ...

    @abstractmethod
    async def meta(self, key: str) -> str | None:
        """A small value the knowledge base remembers about itself (the folder its document
        ids are relative to), or None when never set."""

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None:
        """Remember `value` under `key`, replacing any earlier one; every process sees it."""

    @abstractmethod
    async def stats(self) -> StoreStats: ...

    async def optimize(self) -> None:
        """Bring indexes up to date after a batch of writes (no-op where the server does it)."""

    async def ping(self) -> bool:
        """True when the store answers."""
        await self.kb_version()
        return True

    async def close(self) -> None:
        """Release connections."""


class DeferredStore(KnowledgeStore):
    """A store whose server was not up when a long-running process started (Weaviate still
    booting in a fresh cluster). Instead of crashing the process, every call raises
    `StoreUnavailable` until a connection succeeds. Connecting happens in the background, started
    by use and by `ping` (which readiness probes call) at most every `retry_after` seconds, so
    no request or probe waits on a connect timeout. Then it is the store.

    A `KnowledgeStore` itself, forwarding each method by name, so the interface's completeness
    check holds for it as for every backend."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[KnowledgeStore]],
        *,
        dim: int,
        retry_after: float = 5.0,
        first_error: str = "",
    ) -> None:
        self.dim = dim
        self._connect = connect
        self._retry_after = retry_after
        self._store: KnowledgeStore | None = None
        self._error = first_error or "not connected yet"
        self._tried_at = time.monotonic() if first_error else float("-inf")
        self._attempt: asyncio.Task[None] | None = None

    def _ready(self) -> KnowledgeStore:
        if self._store is not None:
            return self._store
        idle = self._attempt is None or self._attempt.done()
        if idle and time.monotonic() - self._tried_at >= self._retry_after:
            self._tried_at = time.monotonic()
            self._attempt = asyncio.create_task(self._try_connect())
        raise StoreUnavailable(self._error)

    async def _try_connect(self) -> None:
        try:
            self._store = await self._connect()
        except Exception as exc:  # noqa: BLE001 (kept as the reason the next call reports)
            self._error = str(exc) or type(exc).__name__
            return
        log.warning("store.connected after start-up")

    # --- the interface, each call forwarded once connected (a new abstract method of
    # KnowledgeStore makes this class fail to instantiate until it is forwarded here too) ------
    async def replace_documents(self, writes: Sequence[DocumentWrite]) -> None:
        await self._ready().replace_documents(writes)

    async def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return await self._ready().delete_documents(doc_ids)

    async def documents(self) -> dict[str, DocumentRecord]:
        return await self._ready().documents()

    async def chunks_of(self, doc_id: str) -> list[Chunk]:
        return await self._ready().chunks_of(doc_id)

    async def dense(self, vector: np.ndarray, k: int, groups: Sequence[str]) -> list[Hit]:
        return await self._ready().dense(vector, k, groups)

    async def lexical(self, text: str, k: int, groups: Sequence[str]) -> list[Hit]:
        return await self._ready().lexical(text, k, groups)

    async def hybrid(
        self,
        text: str,
        vector: np.ndarray,
        k: int,
        groups: Sequence[str],
        alpha: float,
        candidates: int | None = None,
    ) -> RankedHits:
        return await self._ready().hybrid(text, vector, k, groups, alpha, candidates)

    async def put_user(self, profile: UserProfile, facts: Sequence[str], vectors: np.ndarray) -> None:
        await self._ready().put_user(profile, facts, vectors)

    async def get_user(self, key: str) -> UserProfile | None:
        return await self._ready().get_user(key)

    async def users(self) -> list[UserProfile]:
        return await self._ready().users()

    async def user_facts(self, key: str, vector: np.ndarray, k: int) -> list[str]:
        return await self._ready().user_facts(key, vector, k)

    async def delete_user(self, key: str) -> int:
        return await self._ready().delete_user(key)

    async def kb_version(self) -> int:
        return await self._ready().kb_version()

    async def bump_kb_version(self) -> int:
        return await self._ready().bump_kb_version()

    async def meta(self, key: str) -> str | None:
        return await self._ready().meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._ready().set_meta(key, value)

    async def stats(self) -> StoreStats:
        return await self._ready().stats()

    async def optimize(self) -> None:
        await self._ready().optimize()

    async def ping(self) -> bool:
        """Raises with the reason while not connected, so a readiness probe can show it."""
        return await self._ready().ping()

    async def close(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
            await asyncio.gather(self._attempt, return_exceptions=True)
        if self._store is not None:
            await self._store.close()
