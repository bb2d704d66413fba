"""The rating rules, against a real ledger: who may give what, and clicks that survive an outage."""

from __future__ import annotations

import pytest

from bot.feedback.ratings import Rating, RatingRefused, submit
from bot.feedback.roles import Role, Roles
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart
from tests.support.turns import new_turn

OWNER = "lukas.becker@northwind.example"


def turn_start(user: str = OWNER) -> TurnStart:
    return new_turn("How do I reset my VPN password?", user_key=user, platform="slack", channel="C1", thread_id="t")


async def test_what_each_role_may_give(ledger: Ledger) -> None:
    s = turn_start()
    await ledger.record_turn(s, TurnEnd(status="answered", answer="Open the portal [1]"))
    await submit(ledger, Rating(s.id, OWNER, Role.employee, "slack", thumb=-1, note="link is dead"))
    with pytest.raises(RatingRefused, match="only the answers you were given"):
        await submit(ledger, Rating(s.id, "ana.ribeiro@northwind.example", Role.employee, "slack", thumb=1))
    with pytest.raises(RatingRefused, match="Only support leads"):
        await submit(ledger, Rating(s.id, OWNER, Role.employee, "slack", score=5))
    await submit(
        ledger,
        Rating(
            s.id,
            "lead@northwind.example",
            Role.lead,
            "teams",
            score=3,
            verdict="wrong",
            correction="Use the self-service portal at …",
        ),
    )
    for bad, message in (
        ({"score": 0}, "1 to 5"),
        ({"verdict": "meh"}, "Unknown verdict"),
        ({"correction": "x" * 8_001}, "limit is 8,000"),
        ({}, "empty"),
    ):
        with pytest.raises(RatingRefused, match=message):
            await submit(ledger, Rating(s.id, "lead@northwind.example", Role.lead, "console", **bad))
    with pytest.raises(RatingRefused, match="not on record"):
        await submit(ledger, Rating("no-such-turn", "lead@northwind.example", Role.admin, "console", score=4))
    rows = await ledger.ratings_of(s.id)
    assert [(r.rater_role, r.thumb, r.score) for r in rows] == [("employee", -1, None), ("lead", None, 3)]


async def test_a_click_during_a_ledger_outage_is_spooled_and_its_owner_checked_on_replay(tmp_path) -> None:
    from tests.support.services import missing_pg_database

    async with missing_pg_database("ratings_down") as (url, create):
        ledger = Ledger(url, tmp_path / "spool.jsonl")
        s = turn_start()
        try:
            await ledger.record_turn(s, TurnEnd(status="answered", answer="…"))  # spooled: no database yet
            await submit(ledger, Rating(s.id, OWNER, Role.employee, "slack", thumb=1))
            await submit(ledger, Rating(s.id, "someone.else@northwind.example", Role.employee, "teams", thumb=-1))
            assert ledger.spooled() == 3
            await create()
            assert await ledger.ping() and ledger.spooled() == 0
            [kept] = await ledger.ratings_of(s.id)
            assert (kept.rater_key, kept.thumb) == (OWNER, 1)  # the stranger's click was dropped on replay
        finally:
            await ledger.close()


def test_roles_from_users_slack_groups_and_entra_groups(tmp_path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text(
        "admins:\n  users: [Boss@Northwind.example]\nleads:\n  slack_groups: [S1]\n  entra_groups: [ABC-123]\n"
    )
    roles = Roles.load(path, leads=["lead@northwind.example"])
    assert roles.role_of("boss@northwind.example") is Role.admin
    assert roles.role_of("lead@northwind.example") is Role.lead
    assert roles.role_of("x@northwind.example", slack_groups=["S1"]) is Role.lead
    assert roles.role_of("x@northwind.example", entra_groups=["abc-123"]) is Role.lead
    assert roles.role_of("x@northwind.example", slack_groups=["S2"]) is Role.employee
