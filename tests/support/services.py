"""Where the tests' real services are (Redis, PostgreSQL) and this run's own names in them, so
runs never see each other's data; the repository's example data; free ports."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_KB = REPO / "examples" / "kb"
EXAMPLE_USERS = REPO / "examples" / "users.csv"
REDIS_URL = os.environ.get("DESKMATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


# --- the ledger: SQLite, and databases of this run's own on the real PostgreSQL -------------

PG_ADMIN_DSN = os.environ.get("DESKMATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(sql: str) -> None:
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({exc}): `make test` should have started it")
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new PostgreSQL database named after this run, dropped afterwards."""
    name = f"deskmate_test_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def missing_pg_database(suffix: str) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A real outage: the URL of a PostgreSQL database that does not exist yet, and a function
    that creates it (bringing the ledger back). Dropped at the end."""
    name = f"deskmate_test_{RUN_ID}_{suffix}"

    async def create() -> None:
        await _pg_admin(f'CREATE DATABASE "{name}"')

    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}", create
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
