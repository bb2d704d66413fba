"""Replica heartbeats and the sweep, on every ledger backend: a dead replica's unfinished turn
is closed once; a live one's never, even right after an outage left every heartbeat stale."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot import replicas
from bot.ledger.ledger import Ledger
from bot.ledger.rows import ReplicaRow, TurnRow, TurnStart, new_turn_ids


async def _pending_turn(ledger: Ledger, replica: str) -> str:
    turn_id, reference = new_turn_ids()
    ledger.replica = replica
    await ledger.begin_turn(
        TurnStart(turn_id, reference, datetime.now(UTC), "slack", "u@example", "q?", channel="C1", thread_id="1.2")
    )
    return turn_id


async def _status(ledger: Ledger, turn_id: str) -> TurnRow:
    async with ledger.sessions() as session:
        return await session.get(TurnRow, turn_id)


async def test_after_an_outage_a_live_replica_keeps_its_answers_and_a_dead_one_loses_them(
    ledger_url: str, tmp_path: Path
) -> None:
    writer = Ledger(ledger_url, tmp_path / "w.jsonl")
    await writer.migrate()
    stale = datetime.now(UTC) - timedelta(minutes=5)  # both rows went stale during an outage
    async with writer.sessions.begin() as session:
        session.add_all(
            [
                ReplicaRow(id="live:1:aaaaaa", started_at=stale, seen_at=stale),
                ReplicaRow(id="dead:2:bbbbbb", started_at=stale, seen_at=stale),
            ]
        )
    live_turn = await _pending_turn(writer, "live:1:aaaaaa")
    dead_turn = await _pending_turn(writer, "dead:2:bbbbbb")

    live = Ledger(ledger_url, tmp_path / "live.jsonl")
    live.replica = "live:1:aaaaaa"
    sweeper = Ledger(ledger_url, tmp_path / "s.jsonl")
    sweeper.replica = "sweeper:3:cccccc"
    told: list[str] = []

    async def notify(turn: TurnRow, text: str) -> bool:
        told.append(f"{turn.id} {text}")
        return True

    sweeps = 0

    async def swept(_stale_after: timedelta) -> None:  # called after each of the sweeper's passes
        nonlocal sweeps
        sweeps += 1

    every = 0.25  # stale after 1 s
    tasks = [asyncio.create_task(replicas.keep_alive(sweeper, {"slack": notify}, every, also=swept))]
    try:
        await asyncio.sleep(0.5)  # the live replica's first beat after the outage comes a little later
        tasks.append(asyncio.create_task(replicas.keep_alive(live, {"slack": notify}, every)))
        for _ in range(40):
            if (await _status(writer, dead_turn)).status != "pending":
                break
            await asyncio.sleep(0.1)
        # Two more whole passes of the sweeper: had it been going to sweep the live replica's
        # answer (its heartbeat row looked stale), it would have by then.
        closed_at = sweeps
        for _ in range(100):
            if sweeps >= closed_at + 2:
                break
            await asyncio.sleep(0.05)
        assert sweeps >= closed_at + 2, "the sweeper stopped sweeping"
        dead, alive = await _status(writer, dead_turn), await _status(writer, live_turn)
        assert dead.status == "failed" and dead.error.startswith("interrupted: replica dead:2:bbbbbb")
        assert alive.status == "pending"  # the sweeper waited until the live replica had beaten
        assert len(told) == 1 and told[0].startswith(dead_turn) and dead.reference in told[0]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for each in (writer, live, sweeper):
            await each.close()
