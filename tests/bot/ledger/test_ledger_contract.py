"""The ledger contract, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart
from tests.support.turns import new_turn


def start(question: str = "how do I reset my VPN password?") -> TurnStart:
    return new_turn(question, user_key="ana.ribeiro@northwind.example", channel="web", thread_id="t1", groups=["hr"])


async def test_turn_is_recorded_before_and_after_generation(ledger: Ledger) -> None:
    s = start()
    await ledger.begin_turn(s)
    pending = await ledger.get_turn(s.id)
    assert pending is not None and pending.status == "pending" and pending.answer is None
    assert pending.question == s.question and pending.reference == s.reference
    retrieved = [{"chunk_id": "it/vpn.md#0", "doc_id": "it/vpn.md", "text": "Open Northwind ID…", "score": 0.9}]
    await ledger.finish_turn(
        s.id,
        TurnEnd(
            status="answered",
            answer="Use id.northwind.example/reset [1]",
            retrieved=retrieved,
            cited=["it/vpn.md#0"],
            prompt=[{"role": "user", "content": "Context: …"}],
            prompt_version="v1",
            model="SmolLM2-135M-Instruct",
            adapter_version="",
            kb_version=3,
            confidence=0.71,
            latency_ms={"retrieval": 12.5, "generation": 900.0},
        ),
    )
    done = await ledger.get_turn(s.id)
    assert done.status == "answered" and done.retrieved == retrieved and done.cited == ["it/vpn.md#0"]
    assert done.prompt_version == "v1" and done.kb_version == 3 and done.latency_ms["retrieval"] == 12.5
    assert done.completed_at is not None


async def test_a_crash_leaves_the_question_with_its_error(ledger: Ledger) -> None:
    s = start("what is the guest wifi code?")
    await ledger.begin_turn(s)
    await ledger.finish_turn(s.id, TurnEnd(status="failed", error="GeneratorTimeout: no token for 30 s"))
    row = await ledger.get_turn(s.id)
    assert row.question == "what is the guest wifi code?" and row.status == "failed"
    assert "GeneratorTimeout" in row.error


async def test_begin_is_idempotent_and_feedback_needs_a_turn(ledger: Ledger) -> None:
    s = start()
    await ledger.begin_turn(s)
    await ledger.begin_turn(s)  # a replayed spool entry must not duplicate the turn
    assert [t.id for t in await ledger.recent_turns()] == [s.id]
    await ledger.record_feedback(s.id, "ana.ribeiro@northwind.example", platform="slack", thumb=-1)
    with pytest.raises(LookupError):
        await ledger.record_feedback("no-such-turn", "ana.ribeiro@northwind.example", platform="slack", thumb=1)
    [rating] = await ledger.ratings_of(s.id)
    assert (rating.thumb, rating.rater_role) == (-1, "employee")
    assert (await ledger.get_turn(s.id)).risk == 3  # a 👎 moves the turn up the review queue


async def test_ratings_are_versioned_and_a_lead_review_marks_the_turn(ledger: Ledger) -> None:
    s = start()
    await ledger.record_turn(s, TurnEnd(status="unknown", answer="I couldn't find this", confidence=0.2))
    assert (await ledger.get_turn(s.id)).risk == 4 and not (await ledger.get_turn(s.id)).reviewed
    await ledger.record_feedback(
        s.id,
        "lead@northwind.example",
        platform="console",
        rater_role="lead",
        score=2,
        verdict="incomplete",
        note="misses step 2",
    )
    await ledger.record_feedback(
        s.id,
        "lead@northwind.example",
        platform="console",
        rater_role="lead",
        score=4,
        verdict="correct",
        correction="Open Settings, then …",
    )
    ratings = await ledger.ratings_of(s.id)
    assert [r.score for r in ratings] == [2, 4] and ratings[-1].correction == "Open Settings, then …"
    assert (await ledger.get_turn(s.id)).reviewed


async def test_forget_removes_a_persons_turns_and_ratings(ledger: Ledger) -> None:
    mine, other = start(), start()
    other.user_key = "someone.else@northwind.example"
    for s in (mine, other):
        await ledger.record_turn(s, TurnEnd(status="answered", answer="…"))
    await ledger.record_feedback(mine.id, "lead@northwind.example", platform="console", rater_role="lead", score=5)
    await ledger.record_feedback(other.id, mine.user_key, platform="slack", thumb=1)
    report = await ledger.forget_user(mine.user_key)
    assert (report["turns"], report["ratings_of_their_turns"], report["ratings_they_gave"]) == (1, 1, 1)
    assert await ledger.get_turn(mine.id) is None and await ledger.get_turn(other.id) is not None
    assert await ledger.ratings_of(other.id) == []


async def test_migrate_twice_is_harmless(ledger: Ledger) -> None:
    await ledger.migrate()
    assert await ledger.ping()


async def test_ledger_down_spools_and_replays_in_order(tmp_path: Path) -> None:
    """PostgreSQL without the database yet is a real outage; creating it brings the ledger back."""
    from tests.support.services import missing_pg_database

    async with missing_pg_database("spool") as (url, create):
        ledger = Ledger(url, tmp_path / "spool.jsonl")
        try:
            assert not await ledger.ping()
            s = start("question asked while the ledger was down")
            await ledger.begin_turn(s)
            await ledger.finish_turn(s.id, TurnEnd(status="answered", answer="still answered"))
            assert ledger.spooled() == 2 and not ledger.available
            await create()
            await ledger.migrate()
            assert await ledger.ping()  # ping flushes the spool
            assert ledger.spooled() == 0 and ledger.available
            row = await ledger.get_turn(s.id)
            assert row.status == "answered" and row.answer == "still answered"
        finally:
            await ledger.close()


async def test_a_finished_turn_is_recorded_in_one_write(ledger: Ledger) -> None:
    s = start("how do I connect to the guest wifi?")
    end = TurnEnd(status="answered", answer="Use NW-Guest [1]", cache_hit=True, cited=["it/wifi.md#0"])
    await ledger.record_turn(s, end)
    await ledger.record_turn(s, end)  # a replayed spool entry must not duplicate it
    rows = await ledger.recent_turns()
    assert [r.id for r in rows] == [s.id]
    assert rows[0].status == "answered" and rows[0].cache_hit and rows[0].completed_at is not None
