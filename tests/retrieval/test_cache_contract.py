"""The cache contract, against the in-process cache and the real Redis on this machine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from retrieval.cache import Cache, MemoryCache, RedisCache, open_cache
from retrieval.embeddings import Embedder


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("missing") is None
    await cache.set("a", b"1")
    assert await cache.get("a") == b"1"
    await cache.delete("a")
    assert await cache.get("a") is None


async def _seconds_until(gone: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """How long until `gone()` holds: the expiry is waited on, not slept past and assumed."""
    started = time.monotonic()
    while not await gone():
        assert time.monotonic() - started < timeout, f"still there after {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_ttl_expires(cache: Cache) -> None:
    await cache.set("short", b"x", ttl=0.2)
    assert await cache.get("short") == b"x"

    async def gone() -> bool:
        return await cache.get("short") is None

    assert await _seconds_until(gone) >= 0.15  # kept for (about) its TTL, then gone


async def test_add_only_once(cache: Cache) -> None:
    """`add` is what deduplicates Slack retries: only the first caller wins."""
    results = await asyncio.gather(*(cache.add("event:Ev1", b"1", ttl=10) for _ in range(10)))
    assert results.count(True) == 1


async def test_incr_counts_within_window(cache: Cache) -> None:
    assert [await cache.incr("rate:u", ttl=0.3) for _ in range(3)] == [1, 2, 3]

    async def window_over() -> bool:
        return await cache.get("rate:u") is None

    assert await _seconds_until(window_over) >= 0.2
    assert await cache.incr("rate:u", ttl=0.3) == 1  # a new window counts from one


async def test_query_embeddings_are_cached(cache: Cache, embedder: Embedder) -> None:
    cached = Embedder(embedder.model_ref, cache=cache)
    cached._model = embedder._load()  # share the loaded weights; the cache is what is tested
    first = await cached.embed_query("how do I reset my VPN password")
    key = cached._query_key("how do I reset my VPN password")
    assert await cache.get(key) == first.tobytes()
    again = await cached.embed_query("how do I reset my VPN password")
    assert (again == first).all()


async def test_memory_cache_is_bounded() -> None:
    cache = MemoryCache(max_entries=10)
    for i in range(100):
        await cache.set(f"k{i}", b"v")
    assert sum([await cache.get(f"k{i}") is not None for i in range(100)]) == 10
    assert await cache.get("k99") == b"v"


async def test_redis_down_means_misses_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    down = RedisCache("redis://127.0.0.1:1/0", prefix="x:", retry_after=60)
    with caplog.at_level(logging.WARNING, logger="retrieval.cache"):
        assert await down.get("a") is None
        await down.set("a", b"1")
        assert await down.incr("n") == 0
        assert await down.add("e", b"1") is True  # answering beats dropping without dedup
        assert await down.ping() is False
    warnings = [r for r in caplog.records if "redis_unavailable" in r.getMessage()]
    assert len(warnings) == 1
    await down.close()


def test_open_cache_by_url() -> None:
    assert isinstance(open_cache("memory://"), MemoryCache)
    assert isinstance(open_cache("redis://127.0.0.1:6379/0"), RedisCache)
    with pytest.raises(ValueError, match="unsupported cache URL"):
        open_cache("memcached://x")


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(redis_prefix: str) -> None:
    """More concurrent claims than pooled connections: each waits for a connection, exactly one
    wins, and Redis is never taken for down (which would switch off deduplication)."""
    from tests.support.services import REDIS_URL

    small = RedisCache(REDIS_URL, prefix=f"{redis_prefix}burst:", max_connections=4)
    try:
        claims = await asyncio.gather(*(small.add("seen:Ev1", b"1", ttl=30) for _ in range(60)))
        assert claims.count(True) == 1
        assert small._down_since is None
    finally:
        await small.delete("seen:Ev1")
        await small.close()


async def test_a_claim_answered_late_by_redis_stays_one_claim(redis_prefix: str) -> None:
    """Redis applies a SET NX but its reply arrives after the client's 1 s socket timeout (a
    burst): the claimer must still own the key, a second replica must be refused, and the
    cache must not switch deduplication off."""
    import uuid

    from tests.support.forwarder import Forwarder
    from tests.support.services import REDIS_URL

    slow = Forwarder(6379, late_reply=b"+OK\r\n", late_after=b"NX", late_by=1.5)  # the SET NX's own reply
    await slow.start()
    prefix = f"{redis_prefix}late{uuid.uuid4().hex[:6]}:"
    first = RedisCache(f"redis://127.0.0.1:{slow.port}/0", prefix=prefix)
    other = RedisCache(REDIS_URL, prefix=prefix)
    try:
        assert await first.add("seen:Ev1", b"1", ttl=60) is True  # its reply came too late, yet it is ours
        assert not slow.late_reply  # the late reply really happened
        assert await other.add("seen:Ev1", b"1", ttl=60) is False
        assert await first.add("seen:Ev1", b"1", ttl=60) is False  # still deduplicating
        assert await first.add("seen:Ev2", b"1", ttl=60) is True
    finally:
        await other.clear()
        await first.close()
        await other.close()
        await slow.stop()
