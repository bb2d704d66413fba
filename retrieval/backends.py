"""Choosing a knowledge store by URL, in one place: each backend module imports the interface
(retrieval/store.py), and this one imports the backends, so the direction stays one way."""

from __future__ import annotations

from urllib.parse import urlparse

from retrieval.store import KnowledgeStore
from retrieval.store_lancedb import LanceStore
from retrieval.store_weaviate import WeaviateStore


async def open_store(
    url: str,
    *,
    dim: int,
    api_key: str | None = None,
    grpc_port: int | None = None,
    vector_index_min_rows: int = 20_000,
) -> KnowledgeStore:
    """Open the backend a URL names: `lancedb:///path` (or a bare path) or `http(s)://` Weaviate."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return await WeaviateStore.connect(url, dim=dim, api_key=api_key, grpc_port=grpc_port)
    if parsed.scheme in ("lancedb", "", "file"):
        path = url.split("://", 1)[1] if "://" in url else url
        return await LanceStore.open(path, dim=dim, vector_index_min_rows=vector_index_min_rows)
    raise ValueError(f"unsupported store URL scheme {parsed.scheme!r} in {url!r}")
