"""Many `deskmate serve` processes on one ledger: who is alive, and what happens to the turns of
one that is not.

A turn is begun in the ledger before generation starts (stamped with the replica answering it)
and finished after. A replica that is killed mid-answer never finishes it, and nobody would tell
the employee, who waits for an answer that will not come. So every replica writes a heartbeat
row; each one also looks for `pending` turns whose replica stopped beating, closes them as
failed with the reason, and posts an apology with the reference into the conversation. The close
is a conditional UPDATE (`status = 'pending'`), so exactly one replica claims each turn and the
user is told once.

The heartbeat also carries two duties that need every replica, not just one: replaying spooled
ledger writes (its own, and spool files a gone process left: bot/ledger/spool.py), and applying new
forget requests (ledger tombstones) to this process's own cache, which nothing outside the
process can reach.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from bot import metrics
from bot.ledger.failures import LEDGER_ERRORS
from bot.ledger.ledger import Ledger, rows_affected
from bot.ledger.rows import ReplicaRow, TurnRow
from bot.ledger.tombstones import Tombstone

log = logging.getLogger(__name__)

# A replica counts as gone after this many missed heartbeats.
MISSED_BEATS = 4
# Rows of replicas gone longer than this are removed (their turns were closed long before).
FORGET_AFTER = timedelta(days=1)

Notifier = Callable[[TurnRow, str], Awaitable[bool]]
# Applies a forget request to this process's cache (bot.feedback.forget.purge_cache on the server's cache)
Purger = Callable[[Tombstone], Awaitable[object]]

# Tombstones older than this process (less this margin, for clocks a little apart) are not
# applied: a cache made after them holds nothing they are about.
TOMBSTONE_MARGIN = timedelta(minutes=10)


def stale_window(every: float) -> timedelta:
    """How long a replica or job runner beating every `every` seconds may stay silent before
    the others take its work over."""
    return timedelta(seconds=every * MISSED_BEATS)


def new_replica_id() -> str:
    """Host, pid and a random suffix: a restarted pod reuses its hostname and often its pid."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def interrupted_message(turn: TurnRow) -> str:
    return (
        f"Sorry, I was interrupted while answering your question (the Deskmate server "
        f"handling it stopped). Please ask again. ref {turn.reference}"
    )


async def heartbeat(ledger: Ledger) -> None:
    """Say this replica is alive (insert or refresh its row)."""
    now = datetime.now(UTC)
    async with ledger.sessions.begin() as session:
        row = await session.get(ReplicaRow, ledger.replica)
        if row is None:
            session.add(ReplicaRow(id=ledger.replica, started_at=now, seen_at=now))
        else:
            row.seen_at = now


async def leave(ledger: Ledger) -> None:
    """A clean stop: answers in flight were drained, so nothing of ours needs closing. If the
    ledger cannot be reached the row goes stale instead, which is harmless."""
    try:
        async with ledger.sessions.begin() as session:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.id == ledger.replica))
    except Exception as exc:  # noqa: BLE001
        log.info("replica.leave_failed error=%s", type(exc).__name__)


async def interrupted_turns(ledger: Ledger, stale_after: timedelta) -> list[TurnRow]:
    """Pending turns whose replica has not beaten for `stale_after`."""
    cutoff = datetime.now(UTC) - stale_after
    async with ledger.sessions() as session:
        rows = await session.scalars(
            select(TurnRow)
            .join(ReplicaRow, ReplicaRow.id == TurnRow.replica)
            .where(TurnRow.status == "pending", ReplicaRow.seen_at < cutoff)
            .order_by(TurnRow.created_at)
            .limit(200)
        )
        return list(rows)


async def close_interrupted(ledger: Ledger, turn: TurnRow) -> bool:
    """Mark the turn failed with the reason; True for the one replica whose update won."""
    now = datetime.now(UTC)
    error = f"interrupted: replica {turn.replica} stopped answering (no heartbeat)"
    async with ledger.sessions.begin() as session:
        result = await session.execute(
            update(TurnRow)
            .where(TurnRow.id == turn.id, TurnRow.status == "pending")
            .values(status="failed", error=error, completed_at=now, risk=TurnRow.risk + 2)
            .execution_options(synchronize_session=False)
        )
        return rows_affected(result) == 1


async def sweep(
    ledger: Ledger, notifiers: dict[str, Notifier], stale_after: timedelta, notice_timeout: float = 10.0
) -> int:
    """One pass: close every interrupted turn this replica wins and tell its user. Returns how
    many it closed. Notices are sent concurrently with a time limit: a slow Slack (rate limits)
    must not hold the pass up."""
    notices = []
    for turn in await interrupted_turns(ledger, stale_after):
        if not await close_interrupted(ledger, turn):
            continue  # another replica got there first
        metrics.TURNS.labels(turn.platform, "interrupted").inc()
        log.warning("turn.interrupted turn=%s ref=%s replica=%s", turn.id, turn.reference, turn.replica)
        notices.append(_tell(notifiers.get(turn.platform), turn, notice_timeout))
    await asyncio.gather(*notices)
    async with ledger.sessions.begin() as session:
        await session.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < datetime.now(UTC) - FORGET_AFTER))
    metrics.REPLICA_SWEEPS.inc()
    return len(notices)


async def _tell(notify: Notifier | None, turn: TurnRow, timeout: float) -> None:
    told = False
    if notify is not None:
        try:
            told = await asyncio.wait_for(notify(turn, interrupted_message(turn)), timeout)
        except Exception as exc:  # noqa: BLE001 (a platform error must not stop the sweep)
            log.warning("turn.interrupted_notice_failed turn=%s error=%s", turn.id, type(exc).__name__)
    if not told:
        # The web chat has no conversation to post into: its page shows the broken stream.
        log.info("turn.interrupted_not_told turn=%s platform=%s", turn.id, turn.platform)


async def apply_tombstones(ledger: Ledger, purge: Purger, since: datetime, applied: set[int]) -> int:
    """Apply each forget request made after `since` that this process has not applied yet."""
    count = 0
    for stone in await ledger.tombstones():
        if stone.id in applied:
            continue
        if stone.created_at >= since - TOMBSTONE_MARGIN:
            removed = await purge(stone)
            metrics.FORGOTTEN_PURGES.inc()
            log.warning("forget.applied tombstone=%s person=%s removed=%s", stone.id, stone.person[:16], removed)
            count += 1
        applied.add(stone.id)
    return count


async def keep_alive(
    ledger: Ledger,
    notifiers: dict[str, Notifier],
    every: float,
    also: Callable[[timedelta], Awaitable[Any]] | None = None,
    forgotten: Purger | None = None,
) -> None:
    """Heartbeat and sweep until cancelled; `also(stale_after)` runs with each sweep (the bot
    resumes retraining jobs whose runner died there); `forgotten(tombstone)` runs once for each
    forget request made while this process runs, within one beat of it (the server purges its
    in-process cache there).

    The two run apart, so a long sweep never delays a beat. A replica sweeps only after its own
    beats have landed without a gap for longer than the stale window: after a ledger outage
    every replica's and runner's row is stale at once, and sweeping then would take over the
    live work of all the others (they beat again within one interval; waiting lets them)."""
    stale_after = stale_window(every)
    healthy_since: list[float] = []  # monotonic time of the first beat of the current run
    started = datetime.now(UTC)
    applied: set[int] = set()

    async def beat() -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if ledger.spool.waiting() or ledger.spool.others():
                    # our own turns first (they may be the ones that look stale), then what a
                    # gone process left (the ping adopts its files)
                    await ledger.ping()
                await heartbeat(ledger)
                metrics.REPLICA_HEARTBEATS.labels("ok").inc()
                if not healthy_since:
                    healthy_since.append(loop.time())
            except Exception as exc:  # noqa: BLE001 (an outage only skips beats)
                healthy_since.clear()
                metrics.REPLICA_HEARTBEATS.labels("skipped").inc()
                log.info("replica.heartbeat_skipped error=%s", type(exc).__name__)
            if forgotten is not None and healthy_since:
                try:
                    await apply_tombstones(ledger, forgotten, started, applied)
                except Exception as exc:  # noqa: BLE001 (tried again next beat)
                    log.warning("forget.apply_failed error=%s", type(exc).__name__)
            await asyncio.sleep(every)

    async def sweep_when_healthy() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            if not healthy_since or loop.time() - healthy_since[0] < stale_after.total_seconds() + every:
                continue
            try:
                await sweep(ledger, notifiers, stale_after)
                if also is not None:
                    await also(stale_after)
            except LEDGER_ERRORS as exc:
                log.info("replica.sweep_skipped error=%s", type(exc).__name__)
            except Exception:
                log.exception("replica.sweep_failed")

    await asyncio.gather(beat(), sweep_when_healthy())
