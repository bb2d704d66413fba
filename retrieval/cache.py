"""The cache behind one small interface: Redis in production, a bounded in-process cache by
default.

The cache only ever speeds things up or deduplicates; it is never the source of truth. So a
Redis that is down turns into cache misses (and one warning), never into a failed answer.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import uuid
from abc import ABC, abstractmethod
from typing import cast
from urllib.parse import urlparse

import redis.asyncio as aioredis
from cachetools import TLRUCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


class Cache(ABC):
    """Bytes by string key, with per-key TTLs."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    @abstractmethod
    async def add(self, key: str, value: bytes, ttl: float | None = None, *, if_unsure: bool = True) -> bool:
        """Set only when absent; True when this call set it (used to deduplicate events).
        `if_unsure` is the answer when the backend cannot tell (Redis down or too slow)."""

    @abstractmethod
    async def incr(self, key: str, ttl: float | None = None) -> int:
        """Add one and return the new value; `ttl` applies from the first increment."""

    @abstractmethod
    async def delete(self, *keys: str) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers right now."""

    async def clear(self) -> int:
        """Remove every key this cache owns (its prefix); returns how many."""
        return 0

    @abstractmethod
    async def keys(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern (without the prefix). For rare admin work such as
        forgetting a person, never on the answer path."""

    async def close(self) -> None:
        """Release connections."""


def _expires_at(_key: str, entry: tuple[bytes, float], _now: float) -> float:
    return entry[1]


class MemoryCache(Cache):
    """In-process, bounded (least recently used goes first), with TTLs. For one process."""

    def __init__(self, max_entries: int = 50_000) -> None:
        # Entries carry their absolute expiry, so an increment keeps the original window.
        self._data: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=max_entries, ttu=_expires_at, timer=time.monotonic
        )
        self._lock = asyncio.Lock()

    @staticmethod
    def _deadline(ttl: float | None) -> float:
        return time.monotonic() + ttl if ttl else float("inf")

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        return entry[0] if entry else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._data[key] = (value, self._deadline(ttl))

    async def add(self, key: str, value: bytes, ttl: float | None = None, *, if_unsure: bool = True) -> bool:
        async with self._lock:
            if self._data.get(key) is not None:
                return False
            self._data[key] = (value, self._deadline(ttl))
            return True

    async def incr(self, key: str, ttl: float | None = None) -> int:
        async with self._lock:
            entry = self._data.get(key)
            value = int(entry[0]) + 1 if entry else 1
            deadline = entry[1] if entry else self._deadline(ttl)
            self._data[key] = (str(value).encode(), deadline)
            return value

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def clear(self) -> int:
        count = len(self._data)
        self._data.clear()
        return count

    async def keys(self, pattern: str) -> list[str]:
        now = time.monotonic()
        return [
            k for k, (_v, deadline) in list(self._data.items()) if deadline > now and fnmatch.fnmatchcase(k, pattern)
        ]


class RedisCache(Cache):
    """Redis with a key prefix. Connection failures become misses, logged once per outage, and
    Redis is left alone for a few seconds after a failure so a dead server costs no latency."""

    def __init__(
        self, url: str, prefix: str = "deskmate:", retry_after: float = 5.0, max_connections: int = 200
    ) -> None:
        # A blocking pool: under a burst, callers wait briefly for a connection. The default pool
        # raises MaxConnectionsError instead, which would read as "Redis is down" and switch off
        # deduplication exactly when Slack's retries arrive.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=2.0,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            health_check_interval=30,
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._prefix = prefix
        self._retry_after = retry_after
        self._down_since: float | None = None

    def _k(self, key: str) -> str:
        return self._prefix + key

    def _available(self) -> bool:
        return self._down_since is None or time.monotonic() - self._down_since >= self._retry_after

    def _failed(self, exc: Exception) -> None:
        if self._down_since is None:
            log.warning("cache.redis_unavailable error=%s; continuing without the cache", type(exc).__name__)
        self._down_since = time.monotonic()

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("cache.redis_recovered")
            self._down_since = None

    async def get(self, key: str) -> bytes | None:
        if not self._available():
            return None
        try:
            value = await self._client.get(self._k(key))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        # The pool is made without decode_responses, so Redis hands back bytes, never str.
        return cast("bytes | None", value)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if not self._available():
            return
        try:
            await self._client.set(self._k(key), value, px=int(ttl * 1000) if ttl else None)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._recovered()

    async def add(self, key: str, value: bytes, ttl: float | None = None, *, if_unsure: bool = True) -> bool:
        """A claim that survives a slow Redis. Under a burst a SET NX can time out on our side
        after Redis applied it; treating that as "Redis is down" switched deduplication off
        exactly when Slack's retries arrived (measured: two answers given twice at 800 answers
        in flight). So a timed-out claim is retried, and the stored value carries a token that
        tells "I set it before the timeout" from "someone else set it"."""
        if not self._available():
            return if_unsure  # without the cache we cannot deduplicate: the caller decides
        token = value + b"#" + uuid.uuid4().hex.encode()
        for attempt in range(3):
            try:
                if await self._client.set(self._k(key), token, px=int(ttl * 1000) if ttl else None, nx=True):
                    self._recovered()
                    return True
                if attempt == 0:
                    self._recovered()
                    return False
                # a retry: the key may be ours, set by the attempt that timed out
                return await self._client.get(self._k(key)) == token
            except (RedisTimeoutError, TimeoutError, RedisConnectionError) as exc:
                # A busy pool (no free connection within its timeout) is a slow Redis too;
                # a refused connection fails the same way on the next attempt.
                last: Exception = exc
                if isinstance(exc, RedisConnectionError) and "No connection available" not in str(exc):
                    break
                continue
            except (RedisError, OSError) as exc:
                self._failed(exc)
                return if_unsure
        self._failed(last)
        return if_unsure

    async def incr(self, key: str, ttl: float | None = None) -> int:
        if not self._available():
            return 0
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(self._k(key))
                if ttl:
                    pipe.pexpire(self._k(key), int(ttl * 1000), nx=True)
                value = (await pipe.execute())[0]
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return 0
        self._recovered()
        return int(value)

    async def delete(self, *keys: str) -> None:
        if not keys or not self._available():
            return
        try:
            await self._client.delete(*(self._k(k) for k in keys))
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def ping(self) -> bool:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    async def clear(self) -> int:
        removed = 0
        try:
            async for key in self._client.scan_iter(match=self._prefix + "*", count=500):
                removed += await self._client.delete(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
        return removed

    async def keys(self, pattern: str) -> list[str]:
        found: list[str] = []
        try:
            async for key in self._client.scan_iter(match=self._prefix + pattern, count=500):
                found.append(key.decode().removeprefix(self._prefix))
        except (RedisError, OSError) as exc:
            self._failed(exc)
        return found

    async def close(self) -> None:
        await self._client.aclose()


def open_cache(url: str, prefix: str = "deskmate:") -> Cache:
    """`memory://` (optionally `memory://?max_entries=N`) or `redis://` / `rediss://`."""
    parsed = urlparse(url or "memory://")
    if parsed.scheme == "memory":
        params = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p)
        return MemoryCache(max_entries=int(params.get("max_entries", 50_000)))
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisCache(url, prefix=prefix)
    raise ValueError(f"unsupported cache URL scheme {parsed.scheme!r}")
