"""Shared fixtures: real Redis and PostgreSQL on this machine, isolated per run.

Each run uses its own Redis key prefix (and, from the ledger issue on, its own database) and
removes them at the end, so runs never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval.cache import Cache, MemoryCache, RedisCache  # noqa: E402
from retrieval.embeddings import Embedder  # noqa: E402
from retrieval.store import KnowledgeStore, open_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_KB = REPO / "examples" / "kb"
EXAMPLE_USERS = REPO / "examples" / "users.csv"
REDIS_URL = os.environ.get("DESKMATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One MiniLM for the whole run (loading it takes seconds)."""
    return Embedder()


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"deskmate-test-{RUN_ID}:"
    yield prefix
    cleaner = RedisCache(REDIS_URL, prefix=prefix)
    await cleaner.clear()
    await cleaner.close()


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Cache]:
    """Every cache backend this machine can start."""
    if request.param == "memory":
        yield MemoryCache(max_entries=1000)
        return
    backend = RedisCache(REDIS_URL, prefix=f"{redis_prefix}{uuid.uuid4().hex[:6]}:")
    if not await backend.ping():
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: `make test` should have started it")
    yield backend
    await backend.clear()
    await backend.close()


@pytest.fixture(params=["lancedb", "weaviate"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder
) -> AsyncIterator[KnowledgeStore]:
    """Every knowledge-store backend this machine can start (Weaviate only with WEAVIATE_URL)."""
    if request.param == "lancedb":
        backend = await open_store(f"lancedb://{tmp_path / 'kb'}", dim=embedder.dim)
        yield backend
        await backend.close()
        return
    url = os.environ.get("WEAVIATE_URL")
    if not url:
        pytest.skip("Weaviate contract run skipped: WEAVIATE_URL is not set (no Weaviate server here)")
    from retrieval.store_weaviate import WeaviateStore

    prefix = f"T{RUN_ID}{uuid.uuid4().hex[:4]}"
    backend = await WeaviateStore.connect(
        url, dim=embedder.dim, api_key=os.environ.get("WEAVIATE_API_KEY"), prefix=prefix
    )
    yield backend
    await backend.drop_all()
    await backend.close()


@pytest.fixture
def kb_copy(tmp_path: Path) -> Iterator[Path]:
    """A private copy of the example knowledge base, safe to modify."""
    import shutil

    target = tmp_path / "kb-copy"
    shutil.copytree(EXAMPLE_KB, target)
    yield target
