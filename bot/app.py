"""Wiring: settings in, connected parts out. The CLI and the server both start here, so a
backend is chosen in exactly one place."""

from __future__ import annotations

from dataclasses import dataclass

from bot.settings import Settings
from retrieval.cache import Cache, open_cache
from retrieval.chunking import ChunkingConfig
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.search import Searcher
from retrieval.store import KnowledgeStore, open_store


@dataclass
class Retrieval:
    """The retrieval half of Deskmate, connected."""

    settings: Settings
    store: KnowledgeStore
    cache: Cache
    embedder: Embedder
    searcher: Searcher
    ingestor: Ingestor

    async def close(self) -> None:
        await self.store.close()
        await self.cache.close()


async def open_retrieval(settings: Settings, *, embedder: Embedder | None = None) -> Retrieval:
    """Connect the store and cache the settings name, sharing one embedder."""
    cache = open_cache(settings.cache_url, settings.cache_prefix)
    embedder = embedder or Embedder(
        settings.embedding_model, cache=cache, batch_size=settings.embedding_batch_size
    )
    api_key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    store = await open_store(
        settings.resolved_store_url(), dim=embedder.dim, api_key=api_key,
        grpc_port=settings.weaviate_grpc_port,
    )
    searcher = Searcher(
        store, embedder, cache, alpha=settings.hybrid_alpha,
        min_confidence=settings.min_confidence, max_query_chars=settings.max_query_chars,
    )
    ingestor = Ingestor(
        store, embedder, cache=cache,
        chunking=ChunkingConfig(settings.chunk_size, settings.chunk_overlap),
        max_file_bytes=int(settings.max_file_mb * 1_000_000),
    )
    return Retrieval(settings, store, cache, embedder, searcher, ingestor)
