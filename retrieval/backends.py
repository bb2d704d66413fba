"""Choosing a knowledge store by URL, in one place: each backend module imports the interface
(retrieval/store.py), and this one imports the backends, so the direction stays one way.

A process loads only the backend its URL names: lancedb and weaviate-client take about 1.5 s
to import together, which every `deskmate` command would otherwise pay before doing anything."""

from __future__ import annotations

from urllib.parse import urlparse

from retrieval.store import KnowledgeStore


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
        from retrieval.store_weaviate import WeaviateStore  # lazy: weaviate-client takes ~0.5 s to import

        return await WeaviateStore.connect(url, dim=dim, api_key=api_key, grpc_port=grpc_port)
    if parsed.scheme in ("lancedb", "", "file"):
        from retrieval.store_lancedb import LanceStore  # lazy: lancedb takes ~1 s to import

        path = url.split("://", 1)[1] if "://" in url else url
        return await LanceStore.open(path, dim=dim, vector_index_min_rows=vector_index_min_rows)
    raise ValueError(f"unsupported store URL scheme {parsed.scheme!r} in {url!r}")
