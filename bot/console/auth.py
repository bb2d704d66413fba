"""Who is using the console: one-time sign-in tokens, server-side sessions behind a signed
cookie, CSRF tokens, or a trusted header from the company's SSO proxy.

The console shows what employees asked, so it is never open: a request without a valid session
(or proxy header) sees only the sign-in page, and an employee who signs in sees a refusal.

A session is a row (`ConsoleSessionRow`, keyed by the sha256 of a random session id that only
the cookie carries), so signing out, an admin's `deskmate forget` and the session's expiry end
it at once on every replica: a copied cookie is refused afterwards. Sign-in itself is guarded
against login CSRF by a pre-session cookie whose signed value the form must carry, and every
console post must come from the console's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import delete, select, update

from bot.feedback.roles import Role, Roles
from bot.ledger.ledger import Ledger, rows_affected
from bot.ledger.rows import ConsoleSessionRow, ConsoleTokenRow, aware

COOKIE = "deskmate_console"
# The pre-session cookie of the sign-in form (login CSRF); it lives only on the sign-in path.
LOGIN_COOKIE = "deskmate_login"
LOGIN_PATH = "/console/login"
LOCAL_ADMIN = "admin@local"
TOKEN_HOURS = 24
DEFAULT_PORTS = {"http": "80", "https": "443"}


def console_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else one generated once and kept (0600) in the data folder."""
    if configured:
        return configured
    path = data_dir / "console-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(ledger: Ledger, user_key: str | None = None) -> str:
    """A one-time token that signs `user_key` in (the first-start admin when None)."""
    token = "dmt_" + secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    async with ledger.sessions() as session, session.begin():
        session.add(
            ConsoleTokenRow(
                token_hash=_hash(token),
                user_key=(user_key or LOCAL_ADMIN).strip().lower(),
                role="admin" if user_key is None else None,
                created_at=now,
                expires_at=now + timedelta(hours=TOKEN_HOURS),
            )
        )
    return token


async def redeem_token(ledger: Ledger, token: str) -> tuple[str, str | None] | None:
    """(user key, fixed role) for a valid unused token, which is then spent; else None.

    Spent by one conditional UPDATE, so that of two sign-ins racing with the same token exactly
    one wins on SQLite too (which ignores SELECT ... FOR UPDATE)."""
    now = datetime.now(UTC)
    token_hash = _hash(token.strip())
    async with ledger.sessions() as session, session.begin():
        spent = await session.execute(
            update(ConsoleTokenRow)
            .where(
                ConsoleTokenRow.token_hash == token_hash,
                ConsoleTokenRow.used_at.is_(None),
                ConsoleTokenRow.expires_at > now,
            )
            .values(used_at=now)
        )
        if rows_affected(spent) != 1:
            return None
        row = await session.execute(
            select(ConsoleTokenRow.user_key, ConsoleTokenRow.role).where(ConsoleTokenRow.token_hash == token_hash)
        )
        user_key, role = row.one()
        return user_key, role


@dataclass(frozen=True)
class Viewer:
    """The signed-in person and what they may do.

    `nonce` ties the CSRF token to this session (the session row's id, or "proxy");
    `groups` are the groups the SSO proxy passed (Entra ids), read as access groups too."""

    user_key: str
    role: Role
    nonce: str
    groups: tuple[str, ...] = ()
    session_id: str | None = None  # the session row's id; None behind the SSO proxy

    @property
    def can_review(self) -> bool:
        return self.role >= Role.lead


class Sessions:
    """Server-side sessions behind signed cookies, and the CSRF tokens tied to them."""

    def __init__(self, secret: str, hours: float, roles: Roles) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="deskmate-console-session")
        self._secret = secret.encode()
        self.max_age = int(hours * 3600)
        self.roles = roles

    # --- sessions --------------------------------------------------------------------------
    async def start(self, ledger: Ledger, user_key: str, fixed_role: str | None) -> str:
        """Record a new session for `user_key`; returns the cookie value that names it."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        async with ledger.sessions() as session, session.begin():
            # Sessions past their expiry are dead weight; sign-in is rare enough to sweep them.
            await session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at < now))
            session.add(
                ConsoleSessionRow(
                    id=_hash(session_id),
                    user_key=user_key,
                    role=fixed_role,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.max_age),
                )
            )
        return self._serializer.dumps({"s": session_id})

    async def viewer_from_cookie(self, ledger: Ledger, cookie: str | None) -> Viewer | None:
        """The session's viewer, or None for a bad signature, an unknown, revoked or expired
        session. One primary-key read."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except (BadSignature, SignatureExpired):
            return None
        session_id = data.get("s") if isinstance(data, dict) else None
        if not isinstance(session_id, str) or not session_id:
            return None
        async with ledger.sessions() as session:
            row = await session.get(ConsoleSessionRow, _hash(session_id))
        if row is None or row.revoked_at is not None or aware(row.expires_at) <= datetime.now(UTC):
            return None
        return self._viewer(row.user_key, row.role, (), row.id, session_id=row.id)

    async def revoke(self, ledger: Ledger, viewer: Viewer) -> bool:
        """End the viewer's session for good (sign-out); False when there was none to end."""
        if viewer.session_id is None:
            return False
        async with ledger.sessions() as session, session.begin():
            done = await session.execute(
                update(ConsoleSessionRow)
                .where(
                    ConsoleSessionRow.id == viewer.session_id,
                    ConsoleSessionRow.revoked_at.is_(None),
                )
                .values(revoked_at=datetime.now(UTC))
            )
        return rows_affected(done) == 1

    def viewer_from_proxy(self, email: str, groups: list[str]) -> Viewer:
        return self._viewer(email.strip().lower(), None, tuple(groups), "proxy")

    def _viewer(
        self,
        user_key: str,
        fixed_role: str | None,
        groups: tuple[str, ...],
        nonce: str,
        session_id: str | None = None,
    ) -> Viewer:
        role = self.roles.role_of(user_key, entra_groups=groups)
        if fixed_role:
            role = max(role, Role[fixed_role])
        return Viewer(user_key, role, nonce, groups, session_id)

    # --- CSRF ------------------------------------------------------------------------------
    def _mac(self, message: str) -> str:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, viewer: Viewer) -> str:
        return self._mac(f"csrf|{viewer.user_key}|{viewer.nonce}")

    def csrf_ok(self, viewer: Viewer, token: object) -> bool:
        return isinstance(token, str) and bool(token) and hmac.compare_digest(self.csrf_token(viewer), token)

    @staticmethod
    def login_nonce(cookie: str | None) -> str:
        """The sign-in form's pre-session value: the browser's own when it has a sane one (two
        open sign-in tabs keep working), else a new one."""
        if cookie and 20 <= len(cookie) <= 64 and cookie.replace("-", "").replace("_", "").isalnum():
            return cookie
        return secrets.token_urlsafe(24)

    def login_csrf(self, nonce: str) -> str:
        """What the sign-in form carries for the pre-session cookie `nonce` (signed, so a value
        planted in the form alone, or in the cookie alone, does not pass)."""
        return self._mac(f"login|{nonce}")

    def login_csrf_ok(self, nonce: str | None, token: object) -> bool:
        return (
            bool(nonce)
            and isinstance(token, str)
            and bool(token)
            and hmac.compare_digest(self.login_csrf(nonce or ""), token)
        )

    def pseudonym(self, user_key: str) -> str:
        """A stable stand-in for a person (the same key always gives the same name)."""
        return "person-" + self._mac(f"pseudonym|{user_key}")[:8]


def _netloc(scheme: str, netloc: str) -> str:
    """`host[:port]`, lower-cased, without the scheme's default port."""
    host = netloc.strip().lower()
    default = DEFAULT_PORTS.get(scheme.lower())
    if default and host.endswith(f":{default}"):
        host = host[: -len(default) - 1]
    return host


def foreign_origin(origin: str | None, scheme: str, host: str, allowed_hosts: Iterable[str] = ()) -> str | None:
    """Why a console post came from another site (its `Origin`), or None when it came from the
    console's own pages. Browsers send Origin with every form post; a post without one is not
    a browser's cross-site form (the CSRF token still decides it)."""
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return f"origin {origin[:80]!r}"  # `null` (a sandboxed frame, a data: page) or junk
    theirs = _netloc(parts.scheme, parts.netloc)
    if theirs == _netloc(scheme, host) or theirs in {_netloc(parts.scheme, h) for h in allowed_hosts}:
        return None
    return f"origin {theirs!r}"
