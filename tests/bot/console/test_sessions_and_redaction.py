"""The console's sessions on every ledger backend, and the pure parts of what a viewer may
read: links, pseudonyms, redacted prompts, spreadsheet-safe cells."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.console.auth import Sessions, foreign_origin, issue_token, redeem_token
from bot.console.redaction import Person, Pseudonyms, Reader, redact_prompt
from bot.console.routes import is_web_link
from bot.feedback.export import neutralise
from bot.feedback.roles import Role, Roles
from bot.ledger.ledger import Ledger
from bot.ledger.migrations.runner import alembic_config
from bot.ledger.rows import ConsoleSessionRow

LEAD = "hannah.schmidt@northwind.example"


async def test_a_session_lives_until_sign_out_or_expiry_on_every_backend(ledger: Ledger) -> None:
    sessions = Sessions("s" * 48, hours=1, roles=Roles.load(leads=[LEAD]))
    token = await issue_token(ledger, LEAD)
    raced = await asyncio.gather(*(redeem_token(ledger, token) for _ in range(6)))
    assert [r for r in raced if r] == [(LEAD, None)]  # spent exactly once, even when raced
    cookie = await sessions.start(ledger, LEAD, None)
    viewer = await sessions.viewer_from_cookie(ledger, cookie)
    assert viewer is not None and viewer.user_key == LEAD and viewer.role is Role.lead
    assert await sessions.revoke(ledger, viewer)
    assert await sessions.viewer_from_cookie(ledger, cookie) is None

    expiring = await sessions.start(ledger, LEAD, None)
    async with ledger.sessions() as session, session.begin():
        await session.execute(update(ConsoleSessionRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await sessions.viewer_from_cookie(ledger, expiring) is None
    first_start = await sessions.start(ledger, "admin@local", "admin")
    admin = await sessions.viewer_from_cookie(ledger, first_start)
    assert admin is not None and admin.role is Role.admin


async def test_the_sessions_migration_goes_down_and_up_again(ledger: Ledger) -> None:
    from alembic import command

    def down_and_up(connection: AsyncConnection) -> None:
        command.downgrade(alembic_config(connection), "0005")  # type: ignore[arg-type]
        command.upgrade(alembic_config(connection), "head")  # type: ignore[arg-type]

    async with ledger.engine.begin() as conn:
        await conn.run_sync(down_and_up)  # type: ignore[arg-type]
    sessions = Sessions("s" * 48, hours=1, roles=Roles.load(leads=[LEAD]))
    assert await sessions.viewer_from_cookie(ledger, await sessions.start(ledger, LEAD, None)) is not None


def test_only_http_and_https_urls_are_links() -> None:
    assert is_web_link("https://intranet.northwind.example/help/vpn")
    assert is_web_link("HTTP://intranet.northwind.example/")
    for url in (
        "javascript:alert(1)",
        " javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "//evil.example/x",
        "https://evil.example/\nx",
        "https:\\\\evil.example",
        "",
        None,
    ):
        assert not is_web_link(url), url


def test_origins_other_than_the_console_are_foreign() -> None:
    assert foreign_origin(None, "http", "127.0.0.1:8000") is None  # not a browser form
    assert foreign_origin("http://127.0.0.1:8000", "http", "127.0.0.1:8000") is None
    assert foreign_origin("https://deskmate.northwind.example", "https", "deskmate.northwind.example:443") is None
    assert (
        foreign_origin(
            "https://review.northwind.example",
            "http",
            "deskmate:8000",
            ["review.northwind.example"],
        )
        is None
    )
    for origin in (
        "null",
        "https://evil.example",
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8000.evil.example",
    ):
        assert foreign_origin(origin, "http", "127.0.0.1:8000"), origin


def test_pseudonyms_replace_names_and_emails_but_not_words_that_contain_them() -> None:
    scrub = Pseudonyms([Person("ana.ribeiro@northwind.example", ("Ana Ribeiro",), "person-1")])
    assert (
        scrub("The person asking is Ana Ribeiro (ana.ribeiro@northwind.example).")
        == "The person asking is person-1 (person-1)."
    )
    assert (
        scrub("Thanks ANA, Ribeiro's laptop is fine; banana Anatomy")
        == "Thanks person-1, person-1's laptop is fine; banana Anatomy"
    )


def test_a_hidden_passage_leaves_the_prompt_and_a_prompt_of_unknown_shape_goes_whole() -> None:
    retrieved = [
        {"groups": ["everyone"], "text": "Reset the VPN in the portal."},
        {"groups": ["hr"], "text": "Band L4 in Lisbon is 50,000 - 66,000 EUR."},
    ]
    prompt = [
        {
            "role": "user",
            "content": "Context:\n[1] VPN: Reset the VPN in the portal.\n"
            "[2] Salary bands: Band L4 in Lisbon is 50,000 - 66,000 EUR.\n"
            "Question: band?",
        }
    ]
    it = Reader.of(["it-admin"], see_all=False)
    [shown] = redact_prompt(prompt, retrieved, it)
    assert "50,000" not in shown["content"] and "Salary bands" not in shown["content"]
    assert "[1] VPN: Reset the VPN" in shown["content"] and "[2] [restricted to hr" in shown["content"]
    assert redact_prompt(prompt, retrieved, Reader.of(["hr"], see_all=False)) == prompt
    assert redact_prompt(prompt, retrieved, Reader.of([], see_all=True)) == prompt
    reshaped = [{"role": "user", "content": "Passages: Band L4 in Lisbon is 50,000 - 66,000 EUR."}]
    [whole] = redact_prompt(reshaped, retrieved, it)
    assert whole["content"] == "[restricted to hr: you are not in that group]"


def test_spreadsheet_cells_never_start_a_formula() -> None:
    for cell in ("=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1"):
        assert neutralise(cell) == "'" + cell
    assert neutralise("How do I reset my VPN?") == "How do I reset my VPN?"
    assert neutralise(-1) == -1 and neutralise(0.5) == 0.5 and neutralise(None) is None
