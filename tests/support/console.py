"""The review console under test: a Deskmate whose ledger holds answered turns (who asked what,
who reviews), and signing in over HTTP as a person does: open the sign-in page (it sets the
pre-session cookie the form's CSRF value is tied to), paste the token, submit."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bot.console.auth import issue_token
from tests.support.server import RunningServer
from tests.support.services import REDIS_URL
from tests.support.turns import ask_as


async def login_form(http: aiohttp.ClientSession, url: str) -> str:
    """Open the sign-in page as a browser would (it sets the pre-session cookie); returns the
    CSRF value its form carries."""
    async with http.get(f"{url}/console/login") as r:
        page = await r.text()
        assert r.status == 200, page
    return csrf_of(page) if 'name="csrf"' in page else ""  # "": the server will refuse the form


async def sign_in(http: aiohttp.ClientSession, url: str, token: str, **headers: str) -> aiohttp.ClientResponse:
    """Sign in through the form, as a person does: open the page, paste the token, submit."""
    csrf = await login_form(http, url)
    async with http.post(
        f"{url}/console/login", data={"token": token, "csrf": csrf}, headers=headers, allow_redirects=False
    ) as r:
        await r.read()
        return r


async def signed_in(server: Any, user: str | None) -> aiohttp.ClientSession:
    """An HTTP session that signed in through the login form with a fresh token."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    token = await issue_token(server.deskmate.ledger, user)  # type: ignore[attr-defined]
    r = await sign_in(http, server.url, token)
    assert r.status == 302, r.status
    return http


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


LEAD = "hannah.schmidt@northwind.example"
ADMIN = "sofia.martins@northwind.example"
EMPLOYEE = "lukas.becker@northwind.example"
QUESTIONS = [
    (EMPLOYEE, "How do I reset my VPN password?", "slack", False),
    ("ana.ribeiro@northwind.example", "How do I report a phishing email?", "teams", True),
    (EMPLOYEE, "What is the airspeed velocity of an unladen swallow?", "slack", True),  # not covered
]


def console_settings(tmp_path: Path, store_url: str, redis_prefix: str, **overrides: object) -> dict[str, object]:
    return {
        "data_dir": tmp_path,
        "store_url": store_url,
        "cache_url": REDIS_URL,
        "cache_prefix": f"{redis_prefix}console{uuid.uuid4().hex[:6]}:",
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "generator_url": "echo://",
        "leads": [LEAD],
        "admins": [ADMIN],
        **overrides,
    }


async def seed(server: RunningServer) -> list[str]:
    """Ask the example questions through the real orchestrator; returns their turn ids."""
    ids = []
    for user, question, platform, private in QUESTIONS:
        channel = "C1" if platform == "slack" else "a:1"
        answer = await ask_as(
            server.deskmate.orchestrator,
            server.deskmate.retrieval.store,
            user,
            question,
            platform=platform,
            channel=channel,
            private=private,
        )
        ids.append(answer.turn_id)
    return ids
