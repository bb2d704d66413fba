"""Signing in to the review console over HTTP as a person does: open the sign-in page (it
sets the pre-session cookie the form's CSRF value is tied to), paste the token, submit."""

from __future__ import annotations

from typing import Any

import aiohttp

from bot.console.auth import issue_token


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
