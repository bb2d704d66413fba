"""Background jobs (retraining) in the ledger: one at a time, visible to every process, and
still there after a restart.

"One at a time" is a unique index, not a check-then-insert: a job holds its kind in
`active_slot` while queued or running, so a second `retrain` from another process, replica or
platform fails on insert and is told which job is running and who started it.

Where the work runs is the `job_queue` setting:
- `inprocess` (the embedded default): an asyncio task in the process that accepted the command;
  on start-up a job whose runner died mid-way is resumed (training continues from its newest
  checkpoint).
- `redis`: the job goes on an RQ queue in Redis and a separate `deskmate worker` process runs
  it (RQ is the job library: retries, timeouts and worker bookkeeping are its business).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bot.ledger.ledger import Ledger, rows_affected
from bot.ledger.rows import JobRow, ReplicaRow, aware

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "cancelling")
FINAL = ("succeeded", "failed", "cancelled")


class JobBusy(RuntimeError):
    """Another job of this kind is queued or running; the message names it."""

    def __init__(self, job: JobRow) -> None:
        self.job = job
        when = job.created_at.strftime("%Y-%m-%d %H:%M UTC") if job.created_at else "?"
        super().__init__(
            f"retraining job {job.id[:8]} is already {job.status} (started by "
            f"{job.actor or 'someone'} at {when}, {job.progress:.0%} done); one runs at a time"
        )


async def create_job(ledger: Ledger, kind: str, actor: str, params: dict[str, Any]) -> JobRow:
    """A new queued job, or `JobBusy` when one of this kind is active anywhere."""
    job = JobRow(
        id=str(uuid.uuid4()),
        kind=kind,
        status="queued",
        created_at=datetime.now(UTC),
        actor=actor,
        params=params,
        result={},
        progress=0.0,
        active_slot=kind,
        runner="",
        stage="queued",
    )
    try:
        async with ledger.sessions.begin() as session:
            session.add(job)
    except IntegrityError:
        active = await active_job(ledger, kind)
        if active is None:  # finished between the insert and the read: try once more
            return await create_job(ledger, kind, actor, params)
        raise JobBusy(active) from None
    return job


async def active_job(ledger: Ledger, kind: str) -> JobRow | None:
    async with ledger.sessions() as session:
        return await session.scalar(select(JobRow).where(JobRow.active_slot == kind))


async def get_job(ledger: Ledger, job_id: str) -> JobRow | None:
    """By full id or by a unique prefix of at least 6 characters (what chat replies show)."""
    async with ledger.sessions() as session:
        job = await session.get(JobRow, job_id)
        if job is None and len(job_id) >= 6:
            found = list(await session.scalars(select(JobRow).where(JobRow.id.startswith(job_id)).limit(2)))
            job = found[0] if len(found) == 1 else None
        return job


async def list_jobs(ledger: Ledger, limit: int = 20) -> list[JobRow]:
    async with ledger.sessions() as session:
        return list(await session.scalars(select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)))


async def update_job(ledger: Ledger, job_id: str, **values: Any) -> None:
    async with ledger.sessions.begin() as session:
        await session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))


async def finish_job(
    ledger: Ledger, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """Mark the job done and free the slot for the next one."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": datetime.now(UTC),
        "active_slot": None,
        "error": error,
        "stage": status,
    }
    if result is not None:
        values["result"] = result
    if status == "succeeded":
        values["progress"] = 1.0
    await update_job(ledger, job_id, **values)


async def request_cancel(ledger: Ledger, job_id: str) -> JobRow | None:
    """Ask a running job to stop (it stops at its next training step and keeps its checkpoint);
    a queued one is cancelled at once."""
    job = await get_job(ledger, job_id)
    if job is None or job.status not in ACTIVE:
        return job
    if job.status == "queued":
        await finish_job(ledger, job.id, "cancelled", error="cancelled before it started")
    else:
        await update_job(ledger, job.id, status="cancelling")
    return await get_job(ledger, job.id)


# A resubmitted job that has not started by then is resubmitted again (its queue entry was lost).
CLAIM_LEASE = timedelta(minutes=10)
# A job whose runner died this often is failed instead of resumed (it is probably what kills it).
MAX_RESUMES = 3


async def orphaned_jobs(ledger: Ledger, stale_after: timedelta) -> list[JobRow]:
    """Active jobs whose runner is gone (a bot or worker restarted, a pod replaced, a node
    lost). Their status is still in the ledger; their folder holds the checkpoint.

    A runner is a replica id with a heartbeat row (bot/replicas.py): gone when the row is stale
    or was removed. Pids cannot tell: a replaced pod has a new hostname and a restarted container
    is pid 1 again. A job resubmitted but never started within `CLAIM_LEASE` counts as orphaned
    too."""

    now = datetime.now(UTC)
    async with ledger.sessions() as session:
        active = list(await session.scalars(select(JobRow).where(JobRow.active_slot.is_not(None))))
        beats = {r.id: r.seen_at for r in await session.scalars(select(ReplicaRow))}
    orphans = []
    for job in active:
        if job.status not in ("running", "cancelling"):
            continue
        if not job.runner:
            if job.claimed_at is not None and aware(job.claimed_at) < now - CLAIM_LEASE:
                orphans.append(job)
        else:
            seen = beats.get(job.runner)
            if seen is None or aware(seen) < now - stale_after:
                orphans.append(job)
    return orphans


async def claim_orphan(ledger: Ledger, job: JobRow) -> bool:
    """Take an orphan over for resuming; False when another replica already did, or when the
    job finished meanwhile. The status is left alone (a pending cancel stays pending)."""
    async with ledger.sessions.begin() as session:
        result = await session.execute(
            update(JobRow)
            .where(
                JobRow.id == job.id,
                JobRow.runner == job.runner,
                JobRow.status.in_(("running", "cancelling")),
                JobRow.active_slot.is_not(None),
            )
            .values(runner="", claimed_at=datetime.now(UTC), resumes=JobRow.resumes + 1)
            .execution_options(synchronize_session=False)
        )
        return rows_affected(result) == 1


# --- running jobs ----------------------------------------------------------------------------

JobBody = Callable[[str], Awaitable[None]]


class JobRunner(Protocol):
    """Where retraining jobs run (the `job_queue` setting): `submit` hands a queued job over,
    `stop` (at shutdown) stops what runs in this process; the next start resumes it."""

    async def submit(self, job_id: str) -> None: ...

    async def stop(self) -> None: ...


class InProcessRunner:
    """Runs job bodies as tasks of this event loop; `drain` waits for them at shutdown."""

    def __init__(self, body: JobBody) -> None:
        self.body = body
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id[:8]}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job_id: str) -> None:
        try:
            await self.body(job_id)
        except Exception:
            log.exception("job.crashed id=%s", job_id)

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def stop(self) -> None:
        """At shutdown: stop running jobs where they are; the next start resumes them."""
        for task in self.tasks:
            task.cancel()
        await self.drain()


def queue_name(cache_prefix: str) -> str:
    """The RQ queue, named after the cache prefix so deployments sharing a Redis stay apart."""
    return f"{cache_prefix}jobs"


class RedisRunner:
    """Puts the job on an RQ queue for `deskmate worker`."""

    def __init__(self, redis_url: str, queue: str, *, timeout_s: int = 6 * 3600) -> None:
        self.redis_url = redis_url
        self.queue = queue
        self.timeout_s = timeout_s

    async def submit(self, job_id: str) -> None:
        def enqueue() -> None:
            from redis import Redis
            from rq import Queue

            queue = Queue(self.queue, connection=Redis.from_url(self.redis_url))
            # A resumed job is a new RQ job: the old one may sit in RQ's failed registry.
            queue.enqueue(
                "bot.wiring.run_job_sync",
                job_id,
                job_id=f"deskmate-{job_id}-{uuid.uuid4().hex[:6]}",
                job_timeout=self.timeout_s,
                result_ttl=7 * 86400,
                failure_ttl=30 * 86400,
            )

        await asyncio.to_thread(enqueue)

    async def drain(self) -> None:
        return None

    async def stop(self) -> None:
        """Nothing runs here: a worker's job goes on, or is resumed when the worker is back."""
