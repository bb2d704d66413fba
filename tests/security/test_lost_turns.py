"""Item 7 of the security issue, replayed against a running server over HTTP on the real
PostgreSQL: one Teams personal chat (a 131-character conversation id) made PostgreSQL refuse the
row, the refusal was taken for an outage, every later turn queued behind it in the spool for
ever, and /readyz still said ready."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from retrieval.embeddings import Embedder
from tests.support.server import RunningServer, running_server
from tests.support.services import PG_ADMIN_DSN, fresh_pg_database
from tests.support.turns import new_turn

ANA = "ana.ribeiro@northwind.example"
# "a:1" and base64url characters, 131 in all: a personal chat's id in Microsoft's examples
TEAMS_PERSONAL_CHAT = "a:1" + ("Hb2mX9pQzR4kL_vT7wN-eY0sJc8dU5fG" * 5)[:128]


@pytest.fixture
async def pg_server(tmp_path: Path, example_store_url: str, embedder: Embedder) -> AsyncIterator[RunningServer]:
    """A running Deskmate with the web chat, its ledger in a fresh PostgreSQL database."""
    async with (
        fresh_pg_database() as url,
        running_server(
            embedder,
            data_dir=tmp_path / "data",
            store_url=example_store_url,
            ledger_url=url,
            cache_url="memory://",
            generator_url="echo://",
            web_chat=True,
            answer_cache_ttl=0,
            replica_heartbeat_seconds=0.5,
        ) as server,
    ):
        yield server


async def ask(http: aiohttp.ClientSession, url: str, question: str, thread: str) -> dict:
    """The web chat's /api/ask, which puts `thread` into the turn's thread_id as Teams does
    with its conversation id; returns the answer the page shows."""
    async with http.post(f"{url}/api/ask", json={"user": ANA, "question": question, "thread": thread}) as r:
        assert r.status == 200, await r.text()
        lines = [json.loads(line) for line in (await r.text()).splitlines() if line.strip()]
    [done] = [line for line in lines if line["type"] == "done"]
    return done["answer"]


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(f"{url}/readyz") as r:
        return r.status, await r.json()


async def test_a_teams_personal_chat_is_recorded_and_a_refused_row_is_reported(pg_server: RunningServer) -> None:
    server = pg_server
    async with aiohttp.ClientSession() as http:
        ledger = server.deskmate.ledger
        first = await ask(http, server.url, "how do I reset my VPN password?", TEAMS_PERSONAL_CHAT)
        second = await ask(http, server.url, "and where is the guest wifi code?", TEAMS_PERSONAL_CHAT)
        for answer in (first, second):
            row = await ledger.get_turn(answer["turn_id"])
            assert row is not None and row.thread_id == TEAMS_PERSONAL_CHAT and row.status != "pending"
        status, body = await ready(http, server.url)
        assert status == 200 and "spooled_writes" not in body["parts"]["ledger"]

        # A NUL character, which PostgreSQL cannot store, is dropped at the door: the turn is
        # on record, not lost.
        nul = await ask(http, server.url, "my laptop says \x00 at boot", "web-thread-nul")
        assert (await ledger.get_turn(nul["turn_id"])).question == "my laptop says  at boot"

        # A row PostgreSQL refuses for another reason reaches this server's ledger (a NUL in a
        # field no face cleans): it is dead-lettered, and the turn after it is not queued behind it.
        refused = new_turn("fine", user_key="x@northwind.example", platform="teams", channel="chan\x00nel")
        await ledger.begin_turn(refused)
        after = await ask(http, server.url, "how do I book parental leave?", TEAMS_PERSONAL_CHAT)
        assert await ledger.get_turn(refused.id) is None
        assert (await ledger.get_turn(after["turn_id"])).status != "pending"  # not queued behind it

        status, body = await ready(http, server.url)
        part = body["parts"]["ledger"]
        assert status == 200 and part["ok"]  # a data problem, not an outage: still serving
        assert part["dead_letters"] == 1 and part["dead_letter_file"].endswith("ledger-dead-letters.jsonl")
        reasons = [json.loads(line)["reason"] for line in Path(part["dead_letter_file"]).read_text().splitlines()]
        assert "22021" in reasons[0]
        async with http.get(f"{server.url}/metrics") as r:
            metrics = await r.text()
        assert "deskmate_ledger_dead_letter_rows 1.0" in metrics
        assert 'deskmate_ledger_dead_letters_total{kind="begin"}' in metrics


async def _read_only(database: str, on: bool) -> None:
    """Make new sessions of the database read-only (as after a failover onto a standby), and
    end the open ones so the server's pool reconnects under the new setting."""
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        await admin.execute(f'ALTER DATABASE "{database}" {setting}')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()


async def test_readyz_is_not_ready_while_writes_wait_though_the_database_answers(pg_server: RunningServer) -> None:
    server = pg_server
    async with aiohttp.ClientSession() as http:
        ledger = server.deskmate.ledger
        database = server.settings.ledger_url.rsplit("/", 1)[1]
        assert (await ready(http, server.url))[0] == 200
        await _read_only(database, True)
        try:
            stuck = await ask(http, server.url, "how do I reset my VPN password?", "web-thread-1")
            status, body = await ready(http, server.url)
            part = body["parts"]["ledger"]
            assert status == 503 and not part["ok"] and part["spooled_writes"] >= 1
            assert "although the database answers" in part["error"]
        finally:
            await _read_only(database, False)
        deadline = time.monotonic() + 30
        while (await ready(http, server.url))[0] != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await ready(http, server.url))[0] == 200
        assert (await ledger.get_turn(stuck["turn_id"])).status == "answered"
