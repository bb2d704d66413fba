"""Deskmate as a company runs it: two `deskmate serve` replicas and one `deskmate worker`, each
its own process, on the real Redis and PostgreSQL, with Slack played by a local recorder.

What must hold when requests land on any replica: Slack's retries are answered once, what one
replica writes the other shows, retraining runs once and its promotion reaches every replica
without a restart, a replica killed mid-answer loses no turn, and a replica started before its
stores waits instead of crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.console.auth import issue_token
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnRow
from bot.training import jobs
from tests.support.cluster import Cluster, child_env, readiness
from tests.support.console import sign_in
from tests.support.forwarder import Forwarder
from tests.support.metrics import remote_counter, wait_for_remote_counter
from tests.support.platforms import (
    ANA,
    COMMAND,
    SIGNING_SECRET,
    event_callback,
    mention,
    platforms_stand_in,
    slack_event,
    slack_form,
)
from tests.support.recorder import Call, Recorder
from tests.support.services import REDIS_URL, fresh_pg_database

LEAD = "hannah.schmidt@northwind.example"


SKIPPED = "deskmate_events_skipped"


@pytest.fixture(scope="module")
async def slack() -> AsyncIterator[Recorder]:
    async with platforms_stand_in() as rec:
        yield rec


def shared_settings(
    slack: Recorder, root: Path, ledger_url: str, prefix: str, model_cache: Path, store_url: str
) -> dict[str, str]:
    """What every process of one Deskmate installation shares."""
    return {
        "DESKMATE_STORE_URL": store_url,
        "DESKMATE_CACHE_URL": REDIS_URL,
        "DESKMATE_CACHE_PREFIX": prefix,
        "DESKMATE_LEDGER_URL": ledger_url,
        "DESKMATE_GENERATOR_URL": "echo://?delay=0.3",
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "DESKMATE_SLACK_API_URL": f"{slack.url}/api/",
        "DESKMATE_STREAM_INTERVAL": "0.2",
        "DESKMATE_ADAPTERS_DIR": str(root / "shared" / "adapters"),
        "DESKMATE_JOBS_DIR": str(root / "shared" / "jobs"),
        "DESKMATE_MODEL_CACHE_DIR": str(model_cache),
        "DESKMATE_JOB_QUEUE": "redis",
        "DESKMATE_ADAPTER_POLL_SECONDS": "1",
        "DESKMATE_REPLICA_HEARTBEAT_SECONDS": "2",
        "DESKMATE_ADMINS": ANA,
        "DESKMATE_LEADS": LEAD,
        "DESKMATE_CONSOLE_SECRET": "one-secret-for-all-replicas",
        "DESKMATE_AUTO_PROMOTE": "false",
        "DESKMATE_EVAL_MAX_TURNS": "3",
        "DESKMATE_TRAIN_CONFIG": json.dumps({"train": {"max_steps": 1}}),
        "DESKMATE_RATE_LIMIT_PER_MINUTE": "0",
        "DESKMATE_ANSWER_CACHE_TTL": "0",
    }


@pytest.fixture(scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    slack: Recorder,
    example_store_url: str,
    redis_prefix: str,
    model_cache: Path,
) -> AsyncIterator[Any]:
    """Replicas `a` and `b` started together on a fresh database (both migrate it at once),
    plus a test-side ledger connection to look at what they wrote."""
    root = tmp_path_factory.mktemp("cluster")
    prefix = f"{redis_prefix}cluster{uuid.uuid4().hex[:6]}:"
    async with fresh_pg_database() as ledger_url:
        cluster = Cluster(
            child_env(**shared_settings(slack, root, ledger_url, prefix, model_cache, example_store_url)), root
        )
        try:
            cluster.a, cluster.b = await asyncio.gather(cluster.serve("replica-a"), cluster.serve("replica-b"))
            cluster.ledger = Ledger(ledger_url, root / "test-spool.jsonl")
            cluster.prefix = prefix
            yield cluster
        finally:
            await asyncio.to_thread(cluster.stop_all)  # the forwarders run on this loop
            if hasattr(cluster, "ledger"):
                await cluster.ledger.close()


async def turns_asking(ledger: Ledger, question: str) -> list[TurnRow]:
    async with ledger.sessions() as session:
        return list(await session.scalars(select(TurnRow).where(TurnRow.question == question)))


async def until(check, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(message)


def replies_in_thread(slack: Recorder, thread_ts: str) -> list[Call]:
    """Messages Deskmate opened in a thread (a streamed answer or a posted one)."""
    return [
        c
        for c in slack.calls
        if c.api in ("chat.startStream", "chat.postMessage") and c.body.get("thread_ts") == thread_ts
    ]


async def slash(url: str, slack: Recorder, text: str, user: str = "U2") -> str:
    path = f"/response/{uuid.uuid4().hex[:8]}"
    status, body, _ = await slack_form(
        url, {**COMMAND, "user_id": user, "text": text, "response_url": f"{slack.url}{path}"}
    )
    assert status == 200, body
    reply = await slack.wait_for(lambda calls: next((c for c in calls if c.path == path), None), timeout=30)
    return reply.body["text"]


async def ask_in_channel(url: str, question: str) -> str:
    """A mention in #general, sent to one replica; returns its ts (the answer's thread)."""
    event = mention(question, channel="CGEN")
    status, _, _ = await slack_event(url, event_callback(event))
    assert status == 200
    return event["ts"]


async def test_slack_events_and_their_retries_sent_to_both_replicas_are_answered_once(cluster, slack) -> None:
    question = f"How do I reset my VPN password? ({uuid.uuid4().hex[:6]})"
    event = mention(question, channel="CGEN")
    envelope = event_callback(event)
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    replicas = (cluster.a.url, cluster.b.url)

    async def duplicates() -> float:
        return sum([await remote_counter(url, SKIPPED, platform="slack", reason="duplicate") for url in replicas])

    before = await duplicates()
    # The original and Slack's retries arrive at both replicas at the same moment.
    results = await asyncio.gather(
        slack_event(cluster.a.url, envelope),
        slack_event(cluster.b.url, envelope, headers=retry),
        slack_event(cluster.b.url, envelope, headers={**retry, "X-Slack-Retry-Num": "2"}),
        slack_event(cluster.a.url, envelope, headers={**retry, "X-Slack-Retry-Num": "3"}),
    )
    assert [status for status, _, _ in results] == [200, 200, 200, 200]
    await until(lambda: _finished(cluster.ledger, question), 30, cluster.logs())

    async def three_dropped() -> bool:  # the replicas say they dropped the other three deliveries
        return await duplicates() >= before + 3

    await until(three_dropped, 30, f"the replicas did not drop three duplicates\n{cluster.logs()}")
    assert len(await turns_asking(cluster.ledger, question)) == 1
    assert len(replies_in_thread(slack, event["ts"])) == 1


async def _finished(ledger: Ledger, question: str) -> list[TurnRow]:
    return [t for t in await turns_asking(ledger, question) if t.status != "pending"]


async def test_a_rating_through_one_replica_is_in_the_other_replicas_console(cluster, slack) -> None:
    question = f"How do I connect to the office Wi-Fi? ({uuid.uuid4().hex[:6]})"
    await ask_in_channel(cluster.a.url, question)
    [turn] = await until(lambda: _finished(cluster.ledger, question), 30, cluster.logs())
    note = f"needs the guest network step {uuid.uuid4().hex[:6]}"
    async with _console(cluster.a.url, await issue_token(cluster.ledger, LEAD)) as on_a:
        async with on_a.get(f"{cluster.a.url}/console/turns/{turn.id}") as r:
            page = await r.text()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with on_a.post(
            f"{cluster.a.url}/console/turns/{turn.id}/rate",
            data={"csrf": csrf, "score": "2", "verdict": "incomplete", "note": note, "then": "stay"},
        ) as r:
            assert r.status == 200 and "Saved." in await r.text()
    async with (
        _console(cluster.b.url, await issue_token(cluster.ledger, LEAD)) as on_b,
        on_b.get(f"{cluster.b.url}/console/turns/{turn.id}") as r,
    ):
        assert r.status == 200 and note in await r.text()


@contextlib.asynccontextmanager
async def _console(url: str, token: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A console session on one replica, signed in with a one-time token."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        assert (await sign_in(session, url, token)).status == 302
        yield session


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_retraining_runs_once_on_the_worker_and_both_replicas_follow_the_promotion(
    cluster, slack, example_store_url: str
) -> None:
    from redis import Redis
    from rq import Queue

    from bot.settings import Settings
    from bot.wiring import open_records
    from tests.support.rated import seed_rated_turns

    records = await open_records(
        Settings(
            _env_file=None,
            store_url=example_store_url,
            cache_url="memory://",
            ledger_url=cluster.env["DESKMATE_LEDGER_URL"],
            data_dir=cluster.root / "seed",
        )
    )
    try:
        await seed_rated_turns(records)
    finally:
        await records.close()
    worker = cluster.worker()
    started = await slash(cluster.a.url, slack, "retrain")
    assert "queued" in started, started
    busy = await slash(cluster.b.url, slack, "retrain")  # asked again, on the other replica
    assert busy.startswith("Not started") and "one runs at a time" in busy, busy

    async def finished() -> jobs.JobRow | None:
        [job] = await jobs.list_jobs(cluster.ledger, limit=1)
        return job if job.status not in jobs.ACTIVE else None

    job = await until(finished, 1200, f"the job did not finish\n{cluster.logs()}")
    assert job.status == "succeeded", (job.error, cluster.logs())
    # The worker ran it (in the work horse RQ forks per job), not a replica, and only once.
    assert int(job.runner.split(":")[1]) not in (cluster.a.popen.pid, cluster.b.popen.pid)  # host:pid:suffix
    queue = Queue(f"{cluster.prefix}jobs", connection=Redis.from_url(REDIS_URL))

    async def rq_done() -> bool:  # RQ files the job a moment after our ledger says it finished
        return bool(queue.finished_job_registry.get_job_ids())

    await until(rq_done, 30, f"RQ never finished the job\n{worker.output()[-3000:]}")
    assert len(queue.finished_job_registry.get_job_ids()) == 1 and not queue.failed_job_registry.get_job_ids()
    assert worker.output().count("Job OK") == 1, worker.output()[-3000:]
    assert len(await jobs.list_jobs(cluster.ledger, limit=10)) == 1
    name = job.result["adapter"]

    promoted = await slash(cluster.b.url, slack, f"adapters promote {name} --force")
    assert promoted.startswith(f"{name} is live"), promoted
    for replica in (cluster.a, cluster.b):  # neither restarts: each picks the promotion up itself

        async def serves_it(replica=replica) -> bool:
            question = f"How do I add a printer? ({uuid.uuid4().hex[:6]})"
            await ask_in_channel(replica.url, question)
            [turn] = await until(lambda: _finished(cluster.ledger, question), 30, cluster.logs())
            assert f":{replica.popen.pid}:" in turn.replica
            return turn.adapter_version == name

        await until(serves_it, 30, f"{replica.name} did not pick up {name}\n{cluster.logs()}")
    worker.stop()


async def test_a_replica_killed_mid_answer_loses_no_turn_and_the_user_is_told(cluster, slack) -> None:
    slow = await cluster.serve("replica-slow", DESKMATE_GENERATOR_URL="echo://?delay=60")
    question = f"How do I book a meeting room? ({uuid.uuid4().hex[:6]})"
    ts = await ask_in_channel(slow.url, question)
    await slack.wait_for(lambda calls: replies_in_thread(slack, ts), timeout=30)  # mid-answer now
    [turn] = await turns_asking(cluster.ledger, question)
    assert turn.status == "pending" and f":{slow.popen.pid}:" in turn.replica
    slow.kill()

    async def closed() -> TurnRow | None:
        [row] = await turns_asking(cluster.ledger, question)
        return row if row.status != "pending" else None

    row = await until(closed, 40, f"no replica closed the interrupted turn\n{cluster.logs()}")
    assert row.status == "failed" and row.error.startswith("interrupted")

    def told() -> list[Call]:
        return [
            c
            for c in slack.calls
            if c.api == "chat.postMessage" and c.body.get("thread_ts") == ts and "interrupted" in c.body.get("text", "")
        ]

    await slack.wait_for(lambda _calls: told(), timeout=15)
    # Each survivor finishes a whole sweep after the notice was posted: a second notice, if one
    # were coming, would have been posted by then. The user is still told only once.
    survivors = (cluster.a.url, cluster.b.url)
    sweeps = [await remote_counter(url, "deskmate_replica_sweeps") for url in survivors]
    for url, done in zip(survivors, sweeps, strict=True):
        await wait_for_remote_counter(url, "deskmate_replica_sweeps", done + 2)
    assert len(told()) == 1 and turn.reference in told()[0].body["text"]
    assert told()[0].body["channel"] == "CGEN"


async def test_a_replica_started_before_redis_and_postgresql_waits_and_reports_not_ready(
    tmp_path: Path, slack: Recorder, example_store_url: str, redis_prefix: str, model_cache: Path
) -> None:
    redis, postgres = Forwarder(6379), Forwarder(5432)  # nothing listens on their ports yet
    async with fresh_pg_database() as real_url:
        late_url = real_url.replace("127.0.0.1:5432", f"127.0.0.1:{postgres.port}")
        settings = shared_settings(
            slack, tmp_path, late_url, f"{redis_prefix}late{uuid.uuid4().hex[:6]}:", model_cache, example_store_url
        )
        settings["DESKMATE_CACHE_URL"] = f"redis://127.0.0.1:{redis.port}/0"
        cluster = Cluster(child_env(**settings), tmp_path)
        try:
            replica = await cluster.serve("early")
            status, body = await readiness(replica.url)
            assert status == 503 and not body["parts"]["cache"]["ok"] and not body["parts"]["ledger"]["ok"]
            # It lives through its own retries: two heartbeats the absent ledger did not take.
            await wait_for_remote_counter(replica.url, "deskmate_replica_heartbeats", 2, result="skipped")
            assert replica.alive(), replica.output()
            await redis.start()
            await postgres.start()

            async def ready() -> bool:
                return (await readiness(replica.url))[0] == 200

            await until(ready, 40, f"never became ready: {await readiness(replica.url)}\n{replica.output()[-3000:]}")
            question = f"How do I claim back my expenses? ({uuid.uuid4().hex[:6]})"
            await ask_in_channel(replica.url, question)
            ledger = Ledger(real_url, tmp_path / "spool.jsonl")
            try:
                [turn] = await until(lambda: _finished(ledger, question), 30, replica.output()[-3000:])
                assert turn.status == "answered" and f":{replica.popen.pid}:" in turn.replica
            finally:
                await ledger.close()
        finally:
            await asyncio.to_thread(cluster.stop_all)  # the forwarders run on this loop
            await redis.stop()
            await postgres.stop()


async def test_a_replica_started_before_weaviate_stays_up_and_says_why_it_cannot_answer(
    tmp_path: Path, slack: Recorder, example_store_url: str, redis_prefix: str, model_cache: Path
) -> None:
    from tests.support.services import free_port

    async with fresh_pg_database() as ledger_url:
        settings = shared_settings(
            slack, tmp_path, ledger_url, f"{redis_prefix}now{uuid.uuid4().hex[:6]}:", model_cache, example_store_url
        )
        settings["DESKMATE_STORE_URL"] = f"http://127.0.0.1:{free_port()}"  # Weaviate still booting
        settings["DESKMATE_WEAVIATE_GRPC_PORT"] = str(free_port())
        cluster = Cluster(child_env(**settings), tmp_path)
        try:
            replica = await cluster.serve("before-weaviate")
            status, body = await readiness(replica.url)
            assert status == 503 and not body["parts"]["store"]["ok"] and body["parts"]["ledger"]["ok"]
            question = f"How do I get an office access badge? ({uuid.uuid4().hex[:6]})"
            ts = await ask_in_channel(replica.url, question)
            ledger = Ledger(ledger_url, tmp_path / "spool.jsonl")
            try:
                [turn] = await until(lambda: _finished(ledger, question), 30, replica.output()[-3000:])
            finally:
                await ledger.close()
            assert turn.status == "failed" and turn.error  # on record, with the reason
            reply = await slack.wait_for(lambda calls: replies_in_thread(slack, ts), timeout=15)
            assert reply and replica.alive()
        finally:
            await asyncio.to_thread(cluster.stop_all)  # the forwarders run on this loop
