"""`deskmate serve` over real HTTP: health, readiness, metrics and the web chat's API."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support.server import running_server
from tests.support.services import PG_ADMIN_DSN, REDIS_URL, RUN_ID


@pytest.fixture
async def server(tmp_path: Path, example_store_url: str, embedder, redis_prefix: str):
    async with running_server(
        embedder,
        data_dir=tmp_path,
        store_url=example_store_url,
        cache_url=REDIS_URL,
        cache_prefix=f"{redis_prefix}srv{uuid.uuid4().hex[:6]}:",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        generator_url="echo://",
    ) as running:
        yield running


JSON = {"Content-Type": "application/json"}


async def ask(url: str, body: object) -> tuple[int, list[dict]]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/ask", data=json.dumps(body), headers=JSON) as r:
        text = await r.text()
        if r.status != 200:
            return r.status, [json.loads(text)]
        return r.status, [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_health_readiness_and_metrics(server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        async with http.get(f"{server.url}/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] is True
            assert set(body["parts"]) == {"store", "cache", "ledger", "generator"}
    status, events = await ask(
        server.url, {"user": "lukas.becker@northwind.example", "question": "How do I reset my VPN password?"}
    )
    assert status == 200
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as r:
        text = await r.text()
    assert 'deskmate_turns_total{outcome="answered",platform="web"}' in text
    assert 'deskmate_stage_seconds_bucket{le="0.005",stage="retrieval"}' in text


async def test_the_chat_api_streams_an_answer_with_sources(server) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/users") as r:
        users = await r.json()
    assert len(users) == 8 and {"key", "name", "department", "groups"} <= set(users[0])
    status, events = await ask(
        server.url,
        {"user": "Lukas.Becker@northwind.example", "question": "How do I reset my VPN password?", "thread": "x"},
    )
    kinds = [e["type"] for e in events]
    assert status == 200 and kinds[0] == "status" and kinds[-1] == "done" and "delta" in kinds
    answer = events[-1]["answer"]
    assert answer["outcome"] == "answered"
    assert answer["sources"][0]["doc_id"] == "it/vpn-password-reset.md"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == answer["text"]
    row = await server.deskmate.ledger.get_turn(answer["turn_id"])
    assert row.platform == "web" and row.user_key == "lukas.becker@northwind.example" and row.private


@pytest.mark.parametrize(
    "body, message",
    [
        ("not json at all", "must be JSON"),
        ({"user": "lukas.becker@northwind.example"}, "`question`"),
        ({"user": "nobody@northwind.example", "question": "hi"}, "unknown user"),
        (["a", "list"], "`question`"),
    ],
)
async def test_bad_requests_get_a_clear_400(server, body, message) -> None:
    async with aiohttp.ClientSession() as http:
        data = body if isinstance(body, str) else json.dumps(body)
        async with http.post(f"{server.url}/api/ask", data=data, headers=JSON) as r:
            assert r.status == 400 and message in (await r.json())["error"]
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
        assert r.status == 200  # and the server carries on


async def test_ledger_down_is_not_ready_but_still_answers(tmp_path: Path, example_store_url: str, embedder) -> None:
    missing = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/deskmate_test_{RUN_ID}_never"
    async with running_server(
        embedder, data_dir=tmp_path, store_url=example_store_url, ledger_url=missing, generator_url="echo://"
    ) as server:
        status, events = await ask(
            server.url, {"user": "emily.carter@northwind.example", "question": "How do I book business travel?"}
        )
        assert status == 200 and events[-1]["answer"]["outcome"] == "answered"
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/readyz") as r:
            body = await r.json()
        assert r.status == 503 and body["parts"]["ledger"]["ok"] is False
        assert body["parts"]["ledger"]["spooled_writes"] == 2
