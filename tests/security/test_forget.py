"""Item 8 of the security issue, replayed: `deskmate forget` (the CLI, a process of its own)
against a running server with the in-process cache. Before, the server kept the person's cached
answers and history (the CLI reported 0 removed from its own, empty cache), and the job folders
kept their turns in the training datasets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
from prometheus_client import REGISTRY

from bot.ledger.tombstones import user_tag
from finetune.dataset import DatasetCard, Example, write
from retrieval.embeddings import Embedder
from tests.support.cluster import DESKMATE, child_env
from tests.support.server import running_server

ANA = "ana.ribeiro@northwind.example"
MIGUEL = "miguel.santos@northwind.example"
QUESTION = "how do I reset my VPN password?"


async def ask(http: aiohttp.ClientSession, url: str, user: str, question: str, thread: str) -> dict:
    async with http.post(f"{url}/api/ask", json={"user": user, "question": question, "thread": thread}) as r:
        assert r.status == 200, await r.text()
        lines = [json.loads(line) for line in (await r.text()).splitlines() if line.strip()]
    return next(line["answer"] for line in lines if line["type"] == "done")


def purges() -> float:
    return REGISTRY.get_sample_value("deskmate_forgotten_purges_total") or 0.0


def training_job(jobs_dir: Path, theirs: list[str], others: list[str]) -> Path:
    """A finished retraining job's dataset, as finetune.dataset writes it (turn ids, no users)."""
    folder = jobs_dir / "5b1e0c7a-2f43-4d8e-9a61-0c2d7e8f9a10" / "dataset"

    def example(turn_id: str) -> Example:
        return Example(
            "sft_approved",
            turn_id,
            "2026-12-01T10:00:00+00:00",
            [{"role": "user", "content": "Question: …"}, {"role": "assistant", "content": "…"}],
        )

    write({"train": [example(t) for t in theirs + others], "eval": []}, DatasetCard(records=3), folder)
    return folder / "train.jsonl"


async def test_forget_from_the_cli_reaches_the_running_servers_cache_and_the_job_folders(
    tmp_path: Path, private_store_url: str, embedder: Embedder
) -> None:
    data = tmp_path / "data"
    settings = {
        "data_dir": data,
        "store_url": private_store_url,
        "cache_url": "memory://",
        "generator_url": "echo://",
        "web_chat": True,
        "replica_heartbeat_seconds": 0.2,
    }
    async with running_server(embedder, **settings) as server, aiohttp.ClientSession() as http:
        cache = server.deskmate.retrieval.cache  # type: ignore[attr-defined]
        first = await ask(http, server.url, ANA, QUESTION, "chat-1")
        again = await ask(http, server.url, ANA, QUESTION, "chat-2")
        follow_up = await ask(http, server.url, ANA, "and if I lost my YubiKey?", "chat-1")
        other = await ask(http, server.url, MIGUEL, QUESTION, "chat-3")
        assert again["cache_hit"] and await cache.keys("hist:web::web:chat-1")
        train = training_job(data / "jobs", [first["turn_id"], follow_up["turn_id"]], [other["turn_id"]])

        before = purges()
        cli = await asyncio.create_subprocess_exec(
            DESKMATE,
            "forget",
            "--yes",
            ANA,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(
                DESKMATE_DATA_DIR=str(data),
                DESKMATE_STORE_URL=private_store_url,
                DESKMATE_CACHE_URL="memory://",
                DESKMATE_REPLICA_HEARTBEAT_SECONDS="0.2",
            ),
        )
        printed = (await asyncio.wait_for(cli.communicate(), 180))[0].decode()
        assert cli.returncode == 0, printed
        lines = dict(line.split(": ", 1) for line in printed.splitlines() if ": " in line)
        assert lines["turns"] == "3" and lines["job records"] == "2"
        assert lines["running servers"].startswith("1 alive") and lines["not reachable"] == "none"

        deadline = time.monotonic() + 20
        while purges() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert purges() > before, "the running server did not apply the forget request"
        assert await cache.keys("hist:web::web:chat-*") == ["hist:web::web:chat-3"]
        assert [json.loads(line)["turn_id"] for line in train.read_text().splitlines()] == [other["turn_id"]]
        # her cached answer is gone from the server's own memory; Miguel's stays
        assert await cache.keys(f"answer:*:{user_tag(ANA)}:*") == []
        assert await cache.keys(f"answer:*:{user_tag(MIGUEL)}:*")
        async with http.post(f"{server.url}/api/ask", json={"user": ANA, "question": QUESTION}) as r:
            assert r.status == 400  # and she is no longer in the directory the page offers
