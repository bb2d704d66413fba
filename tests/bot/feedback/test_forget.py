"""Forgetting reaches every copy: spooled writes (a replay never brings the person back), dead
letters, job folders' exports and datasets, adapters' cards, and a serving replica's own cache."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from prometheus_client import REGISTRY

from bot.deskmate import Records
from bot.feedback.export import rated_turns, to_jsonl
from bot.feedback.forget import cache_keys_of, forget, purge_cache
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart
from bot.ledger.tombstones import ForgottenTurn, user_tag
from bot.replicas import keep_alive
from bot.settings import Settings
from bot.wiring import open_retrieval
from finetune.dataset import DatasetConfig
from finetune.pipeline import make_dataset
from finetune.registry import REQUIRED, Registry, new_name
from retrieval.cache import MemoryCache
from retrieval.embeddings import Embedder
from tests.support.services import missing_pg_database
from tests.support.turns import new_turn

ANA = "ana.ribeiro@northwind.example"
MIGUEL = "miguel.santos@northwind.example"
LEAD = "hannah.schmidt@northwind.example"
QUESTIONS = [
    "how do I reset my VPN password?",
    "where do I book parental leave?",
    "what is the guest wifi code?",
    "how do I expense a train ticket?",
    "who approves a new laptop?",
    "how long is the notice period?",
]


def start(user_key: str, question: str, thread: str = "t1") -> TurnStart:
    return new_turn(question, user_key=user_key, channel="web", thread_id=thread)


def served(question: str) -> TurnEnd:
    return TurnEnd(
        status="answered",
        answer=f"The handbook says so about: {question}",
        prompt=[
            {"role": "system", "content": "You are Deskmate."},
            {"role": "user", "content": f"Context:\n[1] The handbook.\n\nQuestion: {question}"},
        ],
        prompt_version="v1",
        model="SmolLM2-135M-Instruct",
    )


async def test_a_replay_never_brings_a_forgotten_person_back(tmp_path: Path) -> None:
    """A replica cut off from PostgreSQL spools Ana's turn and a lead's rating of it; forget runs
    from another process meanwhile and cannot rewrite the live replica's spool; the replay that
    follows skips her writes and lands everyone else's."""
    async with missing_pg_database("forget") as (url, create):
        server = Ledger(url, tmp_path / "ledger-spool.jsonl")
        try:
            theirs, other = start(ANA, "my salary band?"), start(MIGUEL, "guest wifi?")
            await server.begin_turn(theirs)
            await server.finish_turn(theirs.id, served(theirs.question))
            await server.record_feedback(theirs.id, LEAD, platform="console", rater_role="lead", score=5)
            await server.record_turn(other, served(other.question))
            assert server.spooled() == 4
            await create()
            await server.migrate()

            admin = Ledger(url, tmp_path / "ledger-spool.jsonl")  # `deskmate forget`: another process
            try:
                report = await admin.forget_user(ANA)
            finally:
                await admin.close()

            assert await server.ping()
            assert await server.get_turn(theirs.id) is None
            assert await server.ratings_of(theirs.id) == []
            assert (await server.get_turn(other.id)).status == "answered"
            assert server.spooled() == 0 and server.dead_letters() == 0  # skipped, not dead-lettered
            assert report["spool_files_held_by_running_processes"] == [server.spool.path.name]
        finally:
            await server.close()


async def test_forget_rewrites_a_gone_process_spool_and_the_dead_letters(tmp_path: Path) -> None:
    async with missing_pg_database("forgetfiles") as (url, create):
        cli = Ledger(url, tmp_path / "ledger-spool.jsonl")  # a CLI that spooled during the outage, then ended
        theirs, other = start(ANA, "my salary band?"), start(MIGUEL, "guest wifi?")
        await cli.record_turn(theirs, served(theirs.question))
        await cli.record_turn(other, served(other.question))
        await cli.close()
        await create()
        admin = Ledger(url, tmp_path / "ledger-spool.jsonl")
        try:
            await admin.migrate()
            refused = start(ANA, "a question with a \x00 in it")  # PostgreSQL refuses it: dead letter
            await admin.record_turn(refused, served("…"))

            report = await admin.forget_user(ANA)
            files = {p.name: p.read_text() for p in tmp_path.glob("*.jsonl")}
            assert files and not any(ANA in text for text in files.values())
            assert any(MIGUEL in text for text in files.values())
            assert (report["spooled_writes"], report["dead_letters"]) == (1, 1)
            assert report["spool_files_held_by_running_processes"] == [] and admin.dead_letters() == 0
            assert await admin.ping()  # adopts and replays what was left
            assert await admin.get_turn(theirs.id) is None and await admin.get_turn(other.id) is not None
        finally:
            await admin.close()


def fake_adapter(folder: Path) -> Path:
    """An adapter folder with the files the registry copies (their content does not matter to it)."""
    folder.mkdir(parents=True)
    for name in REQUIRED:
        (folder / name).write_bytes(b"weights")
    return folder


async def test_job_folders_and_adapter_cards_lose_the_persons_turns(
    tmp_path: Path, private_store_url: str, embedder: Embedder
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", store_url=private_store_url, cache_url="memory://")  # type: ignore[call-arg]
    ledger = Ledger(settings.resolved_ledger_url(), tmp_path / "data" / "ledger-spool.jsonl")
    await ledger.migrate()
    records = Records(await open_retrieval(settings, embedder=embedder), ledger)
    try:
        turns = {}
        for i, question in enumerate(QUESTIONS):
            s = start(ANA if i % 2 == 0 else MIGUEL, question, thread=f"t{i}")
            await ledger.record_turn(s, served(question))
            await ledger.record_feedback(s.id, LEAD, platform="console", rater_role="lead", score=5)
            turns[s.id] = s.user_key
        hers = {t for t, who in turns.items() if who == ANA}
        # a finished retraining job's folder, as bot/training/retrain.py leaves it
        job_id = "9d2f4c1e-0b7a-4f5e-8a31-2c6d9e0f1a2b"
        folder = settings.resolved_jobs_dir() / job_id
        folder.mkdir(parents=True)
        export = folder / "export.jsonl"
        export.write_text("".join([to_jsonl(r) async for r in rated_turns(ledger)]), encoding="utf-8")
        card = make_dataset(export, [], folder / "dataset", DatasetConfig(eval_share=0.34, distractor_share=0))
        trained = {
            json.loads(line)["turn_id"] for line in (folder / "dataset" / "train.jsonl").read_text().splitlines()
        }
        assert trained & hers and trained - hers
        registry = Registry(settings.resolved_adapters_dir())
        name = new_name("HuggingFaceTB/SmolLM2-135M-Instruct")
        registry.register(
            name,
            fake_adapter(tmp_path / "trained"),
            {"job_id": job_id, "dataset_card": {**card, "held_out_turn_ids": sorted(turns)}},
        )
        other = new_name("HuggingFaceTB/SmolLM2-135M-Instruct") + "x"
        registry.register(other, fake_adapter(tmp_path / "older"), {"job_id": "another-job"})

        report = await forget(records, ANA)

        left = [
            json.loads(line)["turn_id"]
            for path in (folder / "dataset").glob("*.jsonl")
            for line in path.read_text().splitlines()
        ]
        assert left and not set(left) & hers
        assert not any(json.loads(line)["turn_id"] in hers for line in export.read_text().splitlines())
        assert report["job_records"] >= len(hers) + len(trained & hers) and report["job_folders"] == [job_id]
        assert report["adapters_trained_on_their_turns"] == [name]
        assert "cannot be untrained" in report["adapters_note"]
        metadata = registry.get(name).metadata  # still sealed: its files were not touched
        assert set(metadata["dataset_card"]["held_out_turn_ids"]) == set(turns) - hers
        assert report["not_reachable"] == []
    finally:
        await records.close()


def purges() -> float:
    return REGISTRY.get_sample_value("deskmate_forgotten_purges_total") or 0.0


async def test_a_serving_replica_purges_its_own_cache_within_a_heartbeat(ledger: Ledger, tmp_path: Path) -> None:
    """The replica's cache is in its own memory: forget, from another process, reaches it only
    through the tombstone the replica reads on its heartbeat."""
    cache = MemoryCache()
    theirs = start(ANA, "my salary band?", thread="chat-7")
    await ledger.record_turn(theirs, served(theirs.question))
    where = ForgottenTurn(
        theirs.id, theirs.platform, theirs.workspace, theirs.channel, theirs.thread_id, theirs.private
    )
    [history] = cache_keys_of(ANA)([where])
    tag = user_tag(ANA)
    await cache.set(history, b'[["user", "my salary band?"]]')
    await cache.set(f"answer:v1:{tag}:abc", b"{}")
    await cache.set(f"rate:{ANA}:123", b"1")
    await cache.set("slack-user:U07ANA", json.dumps([ANA, "Ana Ribeiro"]).encode())
    await cache.set("hist:web::web:someone-else", b"[]")
    ledger.replica = "replica-under-test"
    beats = asyncio.create_task(keep_alive(ledger, {}, 0.05, forgotten=lambda s: purge_cache(cache, s)))
    try:
        before = purges()
        admin = Ledger(ledger.url, tmp_path / "admin")
        try:
            await admin.forget_user(ANA, cache_keys_of(ANA))
        finally:
            await admin.close()
        deadline = time.monotonic() + 10
        while purges() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert purges() == before + 1
        assert await cache.keys("*") == ["hist:web::web:someone-else"]
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
