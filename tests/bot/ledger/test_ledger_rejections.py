"""Writes the database refuses, against writes it cannot take now, on the real PostgreSQL.

A refused row (a value the column cannot hold) goes to the dead-letter file with the reason and
the writes behind it land; only a database that cannot be reached spools. Teams personal chats
have conversation ids of 131 characters, which VARCHAR(128) refused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from prometheus_client import REGISTRY

from bot.ledger.failures import write_failure
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnRow, TurnStart
from tests.support.services import fresh_pg_database, missing_pg_database
from tests.support.turns import new_turn

# The shape of the ids in Microsoft's Bot Framework examples of a personal (1:1) Teams chat:
# "a:1" and base64url characters, 131 in all.
TEAMS_PERSONAL_CHAT = "a:1" + ("Hb2mX9pQzR4kL_vT7wN-eY0sJc8dU5fG" * 5)[:128]
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def teams_turn(question: str = "how do I reset my VPN password?") -> TurnStart:
    return new_turn(
        question,
        user_key="ana.ribeiro@northwind.example",
        platform="teams",
        user_name="Ana Ribeiro",
        workspace=TENANT,
        channel=TEAMS_PERSONAL_CHAT,
        thread_id=TEAMS_PERSONAL_CHAT,
        private=True,
        groups=["hr"],
    )


def dead_lettered(kind: str) -> float:
    return REGISTRY.get_sample_value("deskmate_ledger_dead_letters_total", {"kind": kind}) or 0.0


async def test_a_teams_personal_chat_is_recorded_and_so_is_the_next_turn(tmp_path: Path) -> None:
    assert len(TEAMS_PERSONAL_CHAT) == 131
    async with fresh_pg_database() as url:
        ledger = Ledger(url, tmp_path / "spool")
        await ledger.migrate()
        try:
            first, second = teams_turn(), teams_turn("and the guest wifi?")
            await ledger.begin_turn(first)
            await ledger.finish_turn(first.id, TurnEnd(status="answered", answer="Open id.northwind.example"))
            await ledger.record_turn(second, TurnEnd(status="answered", answer="NW-Guest"))
            row = await ledger.get_turn(first.id)
            assert row is not None and row.status == "answered"
            assert row.thread_id == TEAMS_PERSONAL_CHAT and row.channel == TEAMS_PERSONAL_CHAT
            assert (await ledger.get_turn(second.id)).answer == "NW-Guest"
            assert ledger.spooled() == 0 and ledger.dead_letters() == 0 and ledger.available
        finally:
            await ledger.close()


async def test_a_row_postgresql_refuses_is_dead_lettered_and_the_writes_behind_it_land(tmp_path: Path) -> None:
    async with fresh_pg_database() as url:
        ledger = Ledger(url, tmp_path / "spool")
        await ledger.migrate()
        try:
            before = dead_lettered("begin"), dead_lettered("finish")
            refused = teams_turn("my password has a \x00 in it, help")  # PostgreSQL text cannot hold NUL
            await ledger.begin_turn(refused)
            await ledger.finish_turn(refused.id, TurnEnd(status="answered", answer="Reset it"))
            after = teams_turn("does the VPN work abroad?")
            await ledger.begin_turn(after)
            await ledger.finish_turn(after.id, TurnEnd(status="answered", answer="Yes"))

            assert (await ledger.get_turn(after.id)).answer == "Yes"
            assert await ledger.get_turn(refused.id) is None
            assert ledger.spooled() == 0 and ledger.available  # not taken for an outage
            letters = [json.loads(line) for line in ledger.spool.dead_letter_path.read_text().splitlines()]
            assert [(d["kind"], d["data"]["id"]) for d in letters] == [("begin", refused.id), ("finish", refused.id)]
            assert "22021" in letters[0]["reason"] and "never begun" in letters[1]["reason"]
            assert letters[0]["data"]["question"] == refused.question  # kept whole, to be fixed and requeued
            assert (dead_lettered("begin"), dead_lettered("finish")) == (before[0] + 1, before[1] + 1)
            assert ledger.dead_letters() == 2
        finally:
            await ledger.close()


async def test_an_outage_still_spools_and_a_refused_row_in_the_replay_blocks_nothing(tmp_path: Path) -> None:
    async with missing_pg_database("rejects") as (url, create):
        ledger = Ledger(url, tmp_path / "spool")
        try:
            assert not await ledger.ping()
            turns = [
                teams_turn("first, while down"),
                teams_turn("second \x00 while down"),
                teams_turn("third, while down"),
            ]
            for t in turns:
                await ledger.begin_turn(t)
                await ledger.finish_turn(t.id, TurnEnd(status="answered", answer=f"answer to {t.question[:5]}"))
            assert ledger.spooled() == 6 and not ledger.available
            await create()
            await ledger.migrate()
            assert await ledger.ping()  # replays the spool
            assert ledger.spooled() == 0 and ledger.available
            first, refused, third = [await ledger.get_turn(t.id) for t in turns]
            assert first.status == third.status == "answered" and refused is None
            assert third.thread_id == TEAMS_PERSONAL_CHAT
            assert ledger.dead_letters() == 2  # the refused turn's begin and finish, nothing else
        finally:
            await ledger.close()


async def test_failures_are_told_apart_by_what_the_database_said(tmp_path: Path) -> None:
    """The real exceptions, produced for real, through the one function that classifies them."""
    failures: dict[str, BaseException] = {}

    async def capture(name: str, ledger: Ledger, start: TurnStart) -> None:
        try:
            async with ledger.sessions.begin() as session:
                session.add(TurnRow(**start.__dict__, status="pending"))
        except Exception as exc:  # noqa: BLE001
            failures[name] = exc

    async with fresh_pg_database() as url:
        ledger = Ledger(url, tmp_path / "a")
        await ledger.migrate()
        long_name = teams_turn()
        long_name.reference = "R" * 40  # our own short column, still VARCHAR(16)
        await capture("too long", ledger, long_name)
        await capture("nul", ledger, teams_turn("a \x00 b"))
        await ledger.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens once the socket is closed
    dropped = url  # the database was dropped on leaving the block
    for name, target in (("refused", f"postgresql://postgres@127.0.0.1:{closed_port}/x"), ("no database", dropped)):
        ledger = Ledger(target, tmp_path / "b", connect_timeout=2)
        await capture(name, ledger, teams_turn())
        await ledger.close()
    assert set(failures) == {"too long", "nul", "refused", "no database"}
    assert {name: write_failure(exc) for name, exc in failures.items()} == {
        "too long": "rejected",
        "nul": "rejected",
        "refused": "outage",
        "no database": "outage",
    }


async def test_a_refused_outcome_closes_its_turn_as_failed_with_where_it_is(tmp_path: Path) -> None:
    async with fresh_pg_database() as url:
        ledger = Ledger(url, tmp_path / "spool")
        await ledger.migrate()
        try:
            turn = teams_turn()
            await ledger.begin_turn(turn)
            await ledger.finish_turn(turn.id, TurnEnd(status="answered", answer="the model said \x00"))
            row = await ledger.get_turn(turn.id)
            assert row.status == "failed" and "ledger-dead-letters.jsonl" in row.error  # not pending for ever
            [letter] = [json.loads(line) for line in ledger.spool.dead_letter_path.read_text().splitlines()]
            assert letter["kind"] == "finish" and letter["data"]["answer"] == "the model said \x00"
        finally:
            await ledger.close()
