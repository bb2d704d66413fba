"""What the server exposes, and to whom: decided once, at start-up, from the settings and the
address really bound.

Deskmate has faces that authenticate nobody (the web chat trusts the person picked on the page;
Teams without an app id, and the Bot Framework Emulator, send unsigned activities). They are for
a laptop. The rule is one function, `exposure()`, so the server, the start-up banner and the
tests cannot disagree: an unauthenticated face is served only on a loopback address, and beyond
loopback only where the operator said so explicitly (never for unsigned Teams activities).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bot.settings import Settings


class StartupRefused(Exception):
    """The settings would open a door nobody asked for; the message says what to set."""


def is_loopback(host: str) -> bool:
    """True when `host` (an address to bind) reaches this machine only. A wildcard ("",
    0.0.0.0, ::) and any name other than localhost are not loopback."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Exposure:
    """Which faces this server serves."""

    loopback: bool
    web_chat: bool
    teams: str  # "off" | "authenticated" | "dev-open"

    @property
    def teams_open(self) -> bool:
        return self.teams == "dev-open"


def exposure(settings: Settings, host: str | None = None) -> Exposure:
    """The faces to serve when listening on `host` (default: the settings' host), or
    `StartupRefused` naming what to set."""
    bind = settings.host if host is None else host
    loopback = is_loopback(bind)
    if settings.teams_app_id:
        teams = "authenticated"
    elif settings.teams_dev_open:
        if not loopback:
            raise StartupRefused(
                f"DESKMATE_TEAMS_DEV_OPEN accepts unsigned Teams activities, so it is refused on "
                f"{bind or 'every address'}: anyone who reaches /api/messages could ask as anyone. "
                "Set DESKMATE_TEAMS_APP_ID and DESKMATE_TEAMS_APP_PASSWORD (the Azure Bot's "
                "credentials), or listen on 127.0.0.1 for local development."
            )
        teams = "dev-open"
    else:
        teams = "off"
    if settings.web_chat is None:
        web_chat = loopback
    elif settings.web_chat and not loopback and not settings.web_chat_beyond_loopback:
        raise StartupRefused(
            f"DESKMATE_WEB_CHAT=true on {bind or 'every address'}: the web chat lets whoever opens "
            "it ask as anyone in the directory. Listen on 127.0.0.1, or set DESKMATE_WEB_CHAT=false, "
            "or, if only trusted people can reach this address (a container port published to the "
            "host's loopback), say so with DESKMATE_WEB_CHAT_BEYOND_LOOPBACK=true."
        )
    else:
        web_chat = bool(settings.web_chat)
    return Exposure(loopback=loopback, web_chat=web_chat, teams=teams)


def split_authority(value: str) -> tuple[str, str]:
    """(host, port) of a Host header value or an `allowed_hosts` entry; port "" when absent.
    IPv6 literals keep their brackets: `[::1]:8000` -> ("[::1]", "8000")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest.removeprefix(":")
    if value.count(":") > 1:  # a bare IPv6 address, as a bind address is written
        return f"[{value}]", ""
    host, _, port = value.partition(":")
    return host, port


def allowed_authorities(bind_host: str, extra: list[str]) -> frozenset[tuple[str, str]]:
    """The (host, port) pairs the Host header may name; port "" means any port. Loopback names,
    the address bound (unless a wildcard) and the operator's `allowed_hosts`."""
    allowed = {("localhost", ""), ("127.0.0.1", ""), ("[::1]", "")}
    if bind_host.strip() not in ("", "0.0.0.0", "::"):
        allowed.add((split_authority(bind_host)[0], ""))
    allowed.update(split_authority(item) for item in extra if item.strip())
    return frozenset(allowed)


def refusal(request: web.Request, allowed: frozenset[tuple[str, str]]) -> str | None:
    """Why this request did not come from the page this server serves, or None."""
    host = request.headers.get("Host", "").strip().lower()
    name, port = split_authority(host)
    if not host or ((name, "") not in allowed and (name, port) not in allowed):
        return f"this server does not answer for Host {host!r} (see DESKMATE_ALLOWED_HOSTS)"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower().split("://", 1)[-1].rstrip("/") != host:
        # A browser names the page that sent the request: it must be this very server.
        return f"requests from the page at {origin!r} are not accepted"
    return None


def forwarded_middleware(settings: Settings) -> Middleware | None:
    """With `trust_forwarded_headers`, the request as the client sent it to the proxy in front
    (scheme, host, client address from X-Forwarded-Proto/-Host/-For), so that `request.secure`
    is true behind a TLS-terminating ingress and the console's cookie is marked Secure. Without
    the setting the headers are ignored: a client could send them itself."""
    if not settings.trust_forwarded_headers:
        return None

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The rightmost value is the one our own proxy added; what stands left of it came
        # from the client (a proxy that appends keeps the client's copy).
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        host = request.headers.get("X-Forwarded-Host", "").split(",")[-1].strip()
        client = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        # One clone: a clone of a clone forgets the first one's overrides.
        scheme = proto if proto in ("http", "https") else request.scheme
        if client:
            request = request.clone(scheme=scheme, host=host or request.host, remote=client)
        else:
            request = request.clone(scheme=scheme, host=host or request.host)
        return await handler(request)

    return forwarded
