"""Many `deskmate serve` processes on one ledger: who is alive, and what happens to the turns of
one that is not.

A turn is begun in the ledger before generation starts (stamped with the replica answering it)
and finished after. A replica that is killed mid-answer never finishes it, and nobody would tell
the employee, who waits for an answer that will not come. So every replica writes a heartbeat
row; each one also looks for `pending` turns whose replica stopped beating, closes them as
failed with the reason, and posts an apology with the reference into the conversation. The close
is a conditional UPDATE (`status = 'pending'`), so exactly one replica claims each turn and the
user is told once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from bot import metrics
from bot.ledger import LEDGER_ERRORS, Ledger, ReplicaRow, TurnRow

log = logging.getLogger(__name__)

# A replica counts as gone after this many missed heartbeats.
MISSED_BEATS = 4
# Rows of replicas gone longer than this are removed (their turns were closed long before).
FORGET_AFTER = timedelta(days=1)

Notifier = Callable[[TurnRow, str], Awaitable[bool]]


def new_replica_id() -> str:
    """Host, pid and a random suffix: a restarted pod reuses its hostname and often its pid."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def interrupted_message(turn: TurnRow) -> str:
    return (f"Sorry, I was interrupted while answering your question (the Deskmate server "
            f"handling it stopped). Please ask again. ref {turn.reference}")


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
    """A clean stop: answers in flight were drained, so nothing of ours needs closing."""
    async with ledger.sessions.begin() as session:
        await session.execute(delete(ReplicaRow).where(ReplicaRow.id == ledger.replica))


async def interrupted_turns(ledger: Ledger, stale_after: timedelta) -> list[TurnRow]:
    """Pending turns whose replica has not beaten for `stale_after`."""
    cutoff = datetime.now(UTC) - stale_after
    async with ledger.sessions() as session:
        rows = await session.scalars(
            select(TurnRow).join(ReplicaRow, ReplicaRow.id == TurnRow.replica)
            .where(TurnRow.status == "pending", ReplicaRow.seen_at < cutoff)
            .order_by(TurnRow.created_at).limit(200))
        return list(rows)


async def close_interrupted(ledger: Ledger, turn: TurnRow) -> bool:
    """Mark the turn failed with the reason; True for the one replica whose update won."""
    now = datetime.now(UTC)
    error = f"interrupted: replica {turn.replica} stopped answering (no heartbeat)"
    async with ledger.sessions.begin() as session:
        result = await session.execute(
            update(TurnRow).where(TurnRow.id == turn.id, TurnRow.status == "pending")
            .values(status="failed", error=error, completed_at=now, risk=TurnRow.risk + 2)
            .execution_options(synchronize_session=False))
        return result.rowcount == 1


async def sweep(ledger: Ledger, notifiers: dict[str, Notifier], stale_after: timedelta) -> int:
    """One pass: close every interrupted turn this replica wins and tell its user. Returns how
    many it closed."""
    closed = 0
    for turn in await interrupted_turns(ledger, stale_after):
        if not await close_interrupted(ledger, turn):
            continue  # another replica got there first
        closed += 1
        metrics.TURNS.labels(turn.platform, "interrupted").inc()
        log.warning("turn.interrupted turn=%s ref=%s replica=%s", turn.id, turn.reference, turn.replica)
        notify = notifiers.get(turn.platform)
        told = False
        if notify is not None:
            try:
                told = await notify(turn, interrupted_message(turn))
            except Exception as exc:  # noqa: BLE001 (a platform error must not stop the sweep)
                log.warning("turn.interrupted_notice_failed turn=%s error=%s", turn.id, type(exc).__name__)
        if not told:
            # The web chat has no conversation to post into: its page shows the broken stream.
            log.info("turn.interrupted_not_told turn=%s platform=%s", turn.id, turn.platform)
    async with ledger.sessions.begin() as session:
        await session.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < datetime.now(UTC) - FORGET_AFTER))
    return closed


async def keep_alive(ledger: Ledger, notifiers: dict[str, Notifier], every: float) -> None:
    """Heartbeat and sweep until cancelled; a ledger outage only skips beats (the turns are
    spooled meanwhile and the sweep resumes when it is back)."""
    stale_after = timedelta(seconds=every * MISSED_BEATS)
    while True:
        try:
            await heartbeat(ledger)
            await sweep(ledger, notifiers, stale_after)
        except LEDGER_ERRORS as exc:
            log.info("replica.heartbeat_skipped error=%s", type(exc).__name__)
        except Exception:
            log.exception("replica.sweep_failed")
        await asyncio.sleep(every)
