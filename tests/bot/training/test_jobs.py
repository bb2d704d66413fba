"""Retraining jobs outlive the process that ran them, and `deskmate worker` runs them from Redis."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.ledger.ledger import Ledger
from bot.ledger.rows import ReplicaRow
from bot.replicas import stale_window
from bot.training import jobs, retrain
from bot.training.jobs import RedisRunner, queue_name
from tests.support.cluster import Cluster, child_env
from tests.support.server import running_server
from tests.support.services import REDIS_URL

STALE = stale_window(5)


async def until_finished(ledger: Ledger, job_id: str, timeout: float = 120) -> jobs.JobRow:
    for _ in range(int(timeout * 4)):
        job = await jobs.get_job(ledger, job_id)
        if job is not None and job.status not in jobs.ACTIVE:
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job.status if job else 'missing'} after {timeout} s")


async def test_a_job_whose_process_died_is_resumed_when_the_bot_starts(
    tmp_path: Path, example_store_url: str, embedder: Any, redis_prefix: str
) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url, tmp_path / "spool.jsonl")
    await ledger.migrate()
    job = await jobs.create_job(ledger, "retrain", "sofia.martins@northwind.example", {})
    # The pod that had the job was replaced: another hostname, pid 1, a heartbeat gone quiet.
    dead = "deskmate-worker-7f9c6-x2k:1:a1b2c3"
    async with ledger.sessions.begin() as session:
        stale = datetime.now(UTC) - timedelta(minutes=10)
        session.add(ReplicaRow(id=dead, started_at=stale, seen_at=stale))
    await jobs.update_job(ledger, job.id, status="running", stage="sft", progress=0.4, runner=dead)
    # Replicas take a dead runner's job over in their sweep, once their own heartbeats have run
    # for a stale window (2 s here, 20 s by default).
    async with running_server(
        embedder,
        replica_heartbeat_seconds=0.5,
        data_dir=tmp_path,
        store_url=example_store_url,
        ledger_url=ledger_url,
        cache_url=REDIS_URL,
        cache_prefix=f"{redis_prefix}orphan:",
        generator_url="echo://",
    ):
        done = await until_finished(ledger, job.id)
    # Resumed from where the ledger said it was: nothing is rated here, so it ends saying so.
    assert done.status == "failed" and "No rated turns yet" in (done.error or "")
    assert f":{os.getpid()}:" in done.runner and done.active_slot is None
    await ledger.close()


async def test_the_worker_runs_jobs_from_the_redis_queue(
    tmp_path: Path, example_store_url: str, redis_prefix: str
) -> None:
    from redis import Redis
    from rq import Queue

    prefix = f"{redis_prefix}worker{uuid.uuid4().hex[:6]}:"
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster = Cluster(
        child_env(
            DESKMATE_LEDGER_URL=ledger_url,
            DESKMATE_STORE_URL=example_store_url,
            DESKMATE_CACHE_URL=REDIS_URL,
            DESKMATE_CACHE_PREFIX=prefix,
            DESKMATE_JOB_QUEUE="redis",
            DESKMATE_GENERATOR_URL="echo://",
        ),
        tmp_path,
    )
    ledger = Ledger(ledger_url, tmp_path / "spool.jsonl")
    await ledger.migrate()
    worker = cluster.worker()
    try:
        from bot.settings import Settings

        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            ledger_url=ledger_url,
            cache_url=REDIS_URL,
            cache_prefix=prefix,
            job_queue="redis",
            store_url=example_store_url,
        )
        job = await retrain.start(settings, ledger, RedisRunner(REDIS_URL, queue_name(prefix)), "cli")
        done = await until_finished(ledger, job.id)
        assert done.status == "failed" and "No rated turns yet" in (done.error or "")
        assert f":{os.getpid()}:" not in done.runner  # another process ran it
    finally:
        worker.stop()
        output = worker.output()
        queue = Queue(queue_name(prefix), connection=Redis.from_url(REDIS_URL))
        for rq_job in queue.finished_job_registry.get_job_ids() + queue.failed_job_registry.get_job_ids():
            queue.fetch_job(rq_job).delete()
        queue.delete(delete_jobs=True)
        await ledger.close()
    assert f"queue '{queue_name(prefix)}'" in output.replace("\n", " ") or "waiting for jobs" in output


async def test_orphans_are_claimed_once_finished_jobs_never_and_a_job_that_keeps_dying_is_failed(
    tmp_path: Path,
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "spool.jsonl")
    await ledger.migrate()
    stale = datetime.now(UTC) - timedelta(minutes=10)
    async with ledger.sessions.begin() as session:
        session.add(ReplicaRow(id="pod-a:1:aaaaaa", started_at=stale, seen_at=stale))
    job = await jobs.create_job(ledger, "retrain", "admin", {})
    await jobs.update_job(ledger, job.id, status="running", runner="pod-a:1:aaaaaa")
    [orphan] = await jobs.orphaned_jobs(ledger, STALE)
    assert await jobs.claim_orphan(ledger, orphan)
    assert not await jobs.claim_orphan(ledger, orphan)  # a second replica with the same view loses

    # The runner finished the job just before a replica acted on its old view: nothing happens.
    await jobs.update_job(ledger, job.id, runner="pod-a:1:aaaaaa")
    [late_view] = await jobs.orphaned_jobs(ledger, STALE)
    await jobs.finish_job(ledger, job.id, "succeeded")
    assert not await jobs.claim_orphan(ledger, late_view)
    assert (await jobs.get_job(ledger, job.id)).status == "succeeded"

    # A job whose runner died again and again is failed rather than resubmitted forever.
    second = await jobs.create_job(ledger, "retrain", "admin", {})
    await jobs.update_job(ledger, second.id, status="running", runner="pod-a:1:aaaaaa", resumes=jobs.MAX_RESUMES)
    submitted: list[str] = []

    async def body(job_id: str) -> None:
        submitted.append(job_id)

    runner = jobs.InProcessRunner(body)
    assert await retrain.resume_orphans(ledger, runner, STALE) == []
    await runner.drain()
    assert submitted == []
    given_up = await jobs.get_job(ledger, second.id)
    assert given_up.status == "failed" and "stopped 4 times" in given_up.error and given_up.active_slot is None
    await ledger.close()
