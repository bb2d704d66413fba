"""Who is using the console: one-time sign-in tokens, signed session cookies, CSRF tokens, or
a trusted header from the company's SSO proxy.

The console shows what employees asked, so it is never open: a request without a valid session
(or proxy header) sees only the sign-in page, and an employee who signs in sees a refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select

from bot.ledger import ConsoleTokenRow, Ledger
from bot.roles import Role, Roles

COOKIE = "deskmate_console"
LOCAL_ADMIN = "admin@local"
TOKEN_HOURS = 24


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
        session.add(ConsoleTokenRow(
            token_hash=_hash(token), user_key=(user_key or LOCAL_ADMIN).strip().lower(),
            role="admin" if user_key is None else None, created_at=now,
            expires_at=now + timedelta(hours=TOKEN_HOURS)))
    return token


async def redeem_token(ledger: Ledger, token: str) -> tuple[str, str | None] | None:
    """(user key, fixed role) for a valid unused token, which is then spent; else None."""
    now = datetime.now(UTC)
    async with ledger.sessions() as session, session.begin():
        row = await session.scalar(select(ConsoleTokenRow).where(
            ConsoleTokenRow.token_hash == _hash(token.strip())).with_for_update())
        if row is None or row.used_at is not None:
            return None
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires < now:
            return None
        row.used_at = now
        return row.user_key, row.role


@dataclass(frozen=True)
class Viewer:
    """The signed-in person and what they may do."""

    user_key: str
    role: Role
    nonce: str

    @property
    def can_review(self) -> bool:
        return self.role >= Role.lead


class Sessions:
    """Signed, expiring session cookies and the CSRF token tied to each session."""

    def __init__(self, secret: str, hours: float, roles: Roles) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="deskmate-console-session")
        self._secret = secret.encode()
        self.max_age = int(hours * 3600)
        self.roles = roles

    def cookie_for(self, user_key: str, fixed_role: str | None) -> str:
        return self._serializer.dumps({"u": user_key, "r": fixed_role, "n": secrets.token_urlsafe(12)})

    def viewer_from_cookie(self, cookie: str | None) -> Viewer | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except (BadSignature, SignatureExpired):
            return None
        return self._viewer(data["u"], data.get("r"), [], data.get("n", ""))

    def viewer_from_proxy(self, email: str, groups: list[str]) -> Viewer:
        return self._viewer(email.strip().lower(), None, groups, "proxy")

    def _viewer(self, user_key: str, fixed_role: str | None, groups: list[str], nonce: str) -> Viewer:
        role = self.roles.role_of(user_key, entra_groups=groups)
        if fixed_role:
            role = max(role, Role[fixed_role])
        return Viewer(user_key, role, nonce)

    def csrf_token(self, viewer: Viewer) -> str:
        return hmac.new(self._secret, f"csrf|{viewer.user_key}|{viewer.nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, viewer: Viewer, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(viewer), token or "")

    def pseudonym(self, user_key: str) -> str:
        """A stable stand-in for a person (the same key always gives the same name)."""
        return "person-" + hmac.new(self._secret, f"pseudonym|{user_key}".encode(), hashlib.sha256).hexdigest()[:8]
