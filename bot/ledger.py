"""The ledger: every turn exactly as served, and (for the later issues) ratings, adapter
versions and retraining jobs. SQLAlchemy 2 async; SQLite by default, PostgreSQL in production;
the schema is made by Alembic migrations (`bot/migrations`), never by `create_all`.

A turn is written twice: `begin_turn` before generation starts (so a crash still leaves the
question and its error on record) and `finish_turn` after. When the database cannot be reached,
both writes go to this process's spool file (bot/spool.py) and are replayed, in order, once it
answers again: the answer is still given and nothing is lost. A write the database *refuses*
(a value it cannot store) is not an outage: it goes to the dead-letter file with the reason and
the writes behind it go on (`write_failure` tells the two apart, in one place).

Forgetting a person leaves a tombstone (`forgotten`): replays skip the person's writes made
before it, from any process's spool, so a spooled write never brings them back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    event,
    select,
    text,
    update,
)
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot import metrics
from bot.spool import Entry, Spool

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class TurnRow(Base):
    """One question and its answer, with everything needed to replay it."""

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    platform: Mapped[str] = mapped_column(String(16))
    workspace: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(Text, default="", index=True)
    thread_id: Mapped[str] = mapped_column(Text, default="")
    user_key: Mapped[str] = mapped_column(Text, index=True)
    user_name: Mapped[str] = mapped_column(Text, default="")
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    groups: Mapped[list] = mapped_column(JSON, default=list)
    question: Mapped[str] = mapped_column(Text)
    search_query: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    answer: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    retrieved: Mapped[list] = mapped_column(JSON, default=list)
    cited: Mapped[list] = mapped_column(JSON, default=list)
    user_facts: Mapped[list] = mapped_column(JSON, default=list)
    prompt: Mapped[list] = mapped_column(JSON, default=list)
    prompt_version: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text, default="")
    adapter_version: Mapped[str] = mapped_column(Text, default="")
    kb_version: Mapped[int] = mapped_column(Integer, default=0)
    confidence: Mapped[float | None] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[dict] = mapped_column(JSON, default=dict)
    risk: Mapped[int] = mapped_column(Integer, default=0)  # review-queue order: see turn_risk()
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False)  # a lead or admin rated it
    replica: Mapped[str] = mapped_column(String(80), default="")  # the server process answering it

    __table_args__ = (
        Index("ix_turns_queue", "reviewed", text("risk DESC"), text("created_at DESC")),
        Index("ix_turns_thread", "platform", "workspace", "channel", "thread_id", "created_at"),
    )


class FeedbackRow(Base):
    """A rating of a turn: a thumb, a lead's score/verdict/note/correction. Rows are never
    updated: re-rating adds a row, and the newest lead rating is the one training uses."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    rater_key: Mapped[str] = mapped_column(Text, index=True)
    rater_role: Mapped[str] = mapped_column(String(16), default="employee")
    platform: Mapped[str] = mapped_column(String(16), default="")
    thumb: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[int | None] = mapped_column(Integer)
    verdict: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_ratings_turn_created", "turn_id", "created_at"),)


class ConsoleTokenRow(Base):
    """A one-time sign-in token for the review console (stored hashed)."""

    __tablename__ = "console_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_key: Mapped[str] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(String(16))  # set for the first-start admin token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSessionRow(Base):
    """A signed-in console session. The cookie carries its id (signed); sign-out and forget
    revoke the row, so a copied cookie stops working at once, on every replica."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's session id
    user_key: Mapped[str] = mapped_column(String(320), index=True)
    role: Mapped[str | None] = mapped_column(String(16))  # set for the first-start admin
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdapterRow(Base):
    """A trained adapter version (immutable name) and its state."""

    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    base_model: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    meta: Mapped[dict] = mapped_column(JSON, default=dict)


class AdapterEventRow(Base):
    """Promotions and rollbacks, in order: who put which adapter live, when."""

    __tablename__ = "adapter_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    adapter: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    previous: Mapped[str] = mapped_column(String(200), default="")  # what was live before ('' = base)


class ReplicaRow(Base):
    """A running `deskmate serve` process and its last heartbeat (see bot/replicas.py)."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    """A background job (retraining), whose status survives a restart of the bot."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    active_slot: Mapped[str | None] = mapped_column(String(32))  # = kind while queued/running
    runner: Mapped[str] = mapped_column(String(200), default="")  # host:pid running it
    stage: Mapped[str] = mapped_column(String(32), default="")
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # taken over from a dead runner
    resumes: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ux_jobs_active_slot", "active_slot", unique=True),)


class ForgottenRow(Base):
    """A person forgotten on request (`deskmate forget`): a tombstone that outlives their rows.
    Replays skip their writes made before it; serving replicas purge their own caches of what
    it names. It holds hashes, never the person's key (migration 0005)."""

    __tablename__ = "forgotten"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    person: Mapped[str] = mapped_column(String(64), index=True)  # person_hash(user_key)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    turn_ids: Mapped[list] = mapped_column(JSON, default=list)  # their turns, for spooled finishes
    cache_keys: Mapped[list] = mapped_column(JSON, default=list)  # key_hash() of each cache key


# --- the turn record -------------------------------------------------------------------------


@dataclass
class TurnStart:
    """What is known before generation starts."""

    id: str
    reference: str
    created_at: datetime
    platform: str
    user_key: str
    question: str
    workspace: str = ""
    channel: str = ""
    thread_id: str = ""
    user_name: str = ""
    private: bool = False
    groups: list[str] = field(default_factory=list)


@dataclass
class TurnEnd:
    """What is known once the answer is sent (or failed)."""

    status: str
    answer: str | None = None
    error: str | None = None
    search_query: str = ""
    retrieved: list[dict] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    user_facts: list[str] = field(default_factory=list)
    prompt: list[dict] = field(default_factory=list)
    prompt_version: str = ""
    model: str = ""
    adapter_version: str = ""
    kb_version: int = 0
    confidence: float | None = None
    cache_hit: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)
    completed_at: datetime = field(default_factory=utcnow)


LEAD_ROLES = ("lead", "admin")


def is_lead_review(role: str | None, score: int | None, verdict: str | None, correction: str | None) -> bool:
    """A rating that reviews the answer (not a thumb or a note), by someone allowed to: the
    kind that marks a turn reviewed and that training learns from."""
    return role in LEAD_ROLES and (score is not None or bool(verdict) or bool(correction))


SLOW_TURN_MS = 10_000


def turn_risk(values: dict[str, Any]) -> int:
    """How urgently a lead should look at a turn: an answer Deskmate was unsure of, could not
    give, or gave slowly comes before a confident quick one (a 👎 adds 3 when it arrives)."""
    risk = 0
    if values.get("status") in ("unknown", "failed"):
        risk += 2
    confidence = values.get("confidence")
    if confidence is not None and confidence < 0.5:
        risk += 2
    if (values.get("latency_ms") or {}).get("total", 0) > SLOW_TURN_MS:
        risk += 1
    return risk


def new_turn_ids() -> tuple[str, str]:
    """A turn id and the short reference a user can quote to support ("ref 3F9A2C1B")."""
    turn_id = str(uuid.uuid4())
    return turn_id, turn_id.replace("-", "")[:8].upper()


def normalise_url(url: str) -> str:
    """Accept the URLs people write (`postgresql://`, `sqlite:///file`) and pick async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets `deskmate serve` and a CLI read and write the same file at once, and with
    `synchronous=NORMAL` a commit no longer waits for two fsyncs (a turn commits twice)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Reads that fail with these mean "the ledger is not reachable now" (callers fall back).
LEDGER_ERRORS = (OperationalError, DBAPIError, OSError, ConnectionError, asyncio.TimeoutError)

# --- why a write failed ------------------------------------------------------------------------

WriteFailure = Literal["outage", "rejected"]

# SQLSTATE classes of a refused row: 22 data exception (too long, NUL byte, out of range, bad
# text for the type), 23 integrity constraint violation. Every other class (08 connection, 3D
# no such database, 53 resources, 57 shutdown, 40 deadlock, 42 schema behind...) is the database
# being unable to take writes now, whatever the row.
REJECTED_SQLSTATE_CLASSES = ("22", "23")


def _sqlstate(exc: DBAPIError) -> str | None:
    for source in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def write_failure(exc: BaseException) -> WriteFailure:
    """Whether a failed write means the database is away ("outage": spool the write and replay
    it later, in order) or refused this one row ("rejected": dead-letter it and go on).

    Found on PostgreSQL 15 through asyncpg (SQLAlchemy wraps its data errors as a plain
    DBAPIError, so the SQLSTATE decides, not the class): a value too long for VARCHAR(128) is
    DBAPIError 22001, a NUL character in text 22021, an integer out of range 22000, a duplicate
    key IntegrityError 23505; a refused connection is ConnectionRefusedError, a server that never
    answers TimeoutError, an unknown host socket.gaierror, a database that does not exist
    DBAPIError 3D000, and a connection killed mid-statement a DBAPIError with
    `connection_invalidated` (08003). On SQLite, "database is locked" is an OperationalError
    and a duplicate key an IntegrityError, neither with a SQLSTATE. Anything that is not a
    database error at all (a turn not on record, a spooled entry an older version wrote that no
    longer fits) is about this write: rejected."""
    if isinstance(exc, (OSError, TimeoutError, PoolTimeout, DisconnectionError)):
        return "outage"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "outage"
        state = _sqlstate(exc)
        if state is not None:
            return "rejected" if state[:2] in REJECTED_SQLSTATE_CLASSES else "outage"
        return "rejected" if isinstance(exc, (DataError, IntegrityError)) else "outage"
    return "rejected"


def describe(exc: BaseException) -> str:
    """The reason kept with a dead letter: the database's own message, without SQLAlchemy's
    copy of the statement and its parameters."""
    if isinstance(exc, DBAPIError):
        cause = getattr(exc.orig, "__cause__", None) or exc.orig
        state = _sqlstate(exc)
        return f"{type(cause).__name__}{f' {state}' if state else ''}: {exc.orig}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


class NotOnRecord(LookupError):
    """A finish or a rating for a turn the ledger does not hold."""

    def __init__(self, turn_id: str, message: str) -> None:
        super().__init__(message)
        self.turn_id = turn_id


class NotTheirs(LookupError):
    """A rating spooled unchecked (the ledger was down) by someone the turn was not for."""


class Forgotten(Exception):  # noqa: N818 (an outcome, not an error)
    """A spooled write of a person forgotten after it was made: it must not land."""


# --- forgotten people ------------------------------------------------------------------------

FORGET_LOCK = 7405111  # PostgreSQL advisory lock: forget (exclusive) against replays (shared)


def person_hash(user_key: str) -> str:
    """How the tombstones and the spool name a person: SHA-256 of the user key. Its first 16
    characters are the orchestrator's `user_tag`, the part of a cache key naming the person."""
    return hashlib.sha256(user_key.encode()).hexdigest()


def key_hash(cache_key: str) -> str:
    """How a tombstone names a cache key to drop (it may spell out a conversation or an email)."""
    return hashlib.sha256(cache_key.encode()).hexdigest()


@dataclass(frozen=True)
class Tombstone:
    """A `forgotten` row as the replicas use it."""

    id: int
    person: str
    created_at: datetime
    turn_ids: frozenset[str]
    cache_keys: frozenset[str]


@dataclass(frozen=True)
class ForgottenTurn:
    """Where a forgotten person's turn was: what their cached history is keyed by."""

    id: str
    platform: str
    workspace: str
    channel: str
    thread_id: str
    private: bool


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite returns naive times


def _entry_time(entry: Entry) -> datetime:
    try:
        return _aware(datetime.fromisoformat(str(entry["at"])))
    except (KeyError, ValueError):
        return datetime.min.replace(tzinfo=UTC)  # an entry of an older version: before any tombstone


def entry_turn(entry: Entry) -> str | None:
    data = entry.get("data") or {}
    return data.get("turn_id") if entry.get("kind") == "feedback" else data.get("id")


def entry_people(entry: Entry) -> set[str]:
    """Hashes of the people a spooled write concerns: the asker, or the rater."""
    data = entry.get("data") or {}
    people = set(entry.get("who") or [])
    for name in ("user_key", "rater_key"):
        if isinstance(data.get(name), str):
            people.add(person_hash(data[name]))
    return people


def concerns(entry: Entry, person: str, turn_ids: set[str]) -> bool:
    """Whether a spooled write or a dead letter is about this person or one of their turns."""
    return person in entry_people(entry) or entry_turn(entry) in turn_ids


# How many begun-but-unfinished turns a process remembers the asker of (for the spool entry of
# the finish, which carries no user key); a turn that is never finished must not grow it.
OWNERS_REMEMBERED = 10_000


class Ledger:
    """Turns (and, later, ratings, adapters and jobs) in SQL, with a spool for outages.

    `spool` is the spool directory (one file per process), or, as older callers pass it, a file
    path whose folder and name the files are made from (bot/spool.py)."""

    def __init__(self, url: str, spool: Path, *, connect_timeout: float = 3.0, owner: str | None = None) -> None:
        self.url = normalise_url(url)
        self.spool = Spool(Path(spool), owner)
        connect_args: dict[str, Any] = {}
        if self.url.startswith("postgresql+asyncpg"):
            connect_args = {"timeout": connect_timeout}
        elif self.url.startswith("sqlite"):
            connect_args = {"timeout": 15}
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            connect_args=connect_args,
            pool_pre_ping=True,
        )
        if self.url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._spool_lock = asyncio.Lock()
        self._migrated = False
        self.available = True
        # Set by a serving process (bot/replicas.py): stamped on every turn it begins, so that
        # another replica can close the turn if this process dies mid-answer.
        self.replica = ""
        self._owners: OrderedDict[str, str] = OrderedDict()  # turn id -> asker's hash, until finished
        self._tombstones: dict[int, Tombstone] = {}

    @property
    def _postgres(self) -> bool:
        return self.url.startswith("postgresql")

    # --- schema ----------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from bot.migrations.runner import upgrade

        if self.url.startswith("sqlite"):
            db_path = self.url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if self._postgres:
                # Replicas starting together would otherwise race to create the same tables;
                # the lock is released with this transaction.
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7405110)")
            await conn.run_sync(upgrade)
        self._migrated = True

    # --- turns -----------------------------------------------------------------------------
    async def begin_turn(self, start: TurnStart) -> None:
        """Record the question before generation starts (spooled when the database is down)."""
        self._owners[start.id] = person_hash(start.user_key)
        while len(self._owners) > OWNERS_REMEMBERED:
            self._owners.popitem(last=False)
        await self._write(
            "begin", {**asdict(start), "created_at": start.created_at.isoformat(), "replica": self.replica}
        )

    async def finish_turn(self, turn_id: str, end: TurnEnd) -> None:
        """Record the outcome (spooled when the database is down)."""
        asker = self._owners.pop(turn_id, None)
        await self._write(
            "finish",
            {"id": turn_id, **asdict(end), "completed_at": end.completed_at.isoformat()},
            who=[asker] if asker else [],
        )

    async def record_turn(self, start: TurnStart, end: TurnEnd) -> None:
        """Record a turn that is already over (a cache hit, a refusal) in one write."""
        await self._write(
            "record",
            {
                **asdict(start),
                "created_at": start.created_at.isoformat(),
                **asdict(end),
                "completed_at": end.completed_at.isoformat(),
            },
        )

    async def get_turn(self, turn_id: str) -> TurnRow | None:
        async with self.sessions() as session:
            return await session.get(TurnRow, turn_id)

    async def recent_turns(self, limit: int = 50) -> list[TurnRow]:
        async with self.sessions() as session:
            rows = await session.scalars(select(TurnRow).order_by(TurnRow.created_at.desc()).limit(limit))
            return list(rows)

    async def record_feedback(
        self,
        turn_id: str,
        rater_key: str,
        *,
        platform: str,
        thumb: int | None = None,
        note: str | None = None,
        rater_role: str = "employee",
        score: int | None = None,
        verdict: str | None = None,
        correction: str | None = None,
        owner_check: bool = False,
    ) -> None:
        """A rating, as a new row (re-rating keeps the history). Spooled like turns when the
        database is down, because a click or a lead's review cannot be asked for again.
        Validation and permissions are `bot.ratings`' job; this only stores. Raises
        LookupError (now, not later) for a turn that is not on record."""
        await self._write(
            "feedback",
            {
                "turn_id": turn_id,
                "rater_key": rater_key,
                "platform": platform,
                "thumb": thumb,
                "note": note,
                "rater_role": rater_role,
                "score": score,
                "verdict": verdict,
                "correction": correction,
                "created_at": utcnow().isoformat(),
                **({"owner_check": True} if owner_check else {}),
            },
        )

    async def ratings_of(self, turn_id: str) -> list[FeedbackRow]:
        """Every rating of a turn, oldest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(FeedbackRow)
                .where(FeedbackRow.turn_id == turn_id)
                .order_by(FeedbackRow.created_at, FeedbackRow.id)
            )
            return list(rows)

    # --- forgetting a person ---------------------------------------------------------------
    async def forget_user(
        self, user_key: str, cache_keys: Callable[[list[ForgottenTurn]], Iterable[str]] | None = None
    ) -> dict[str, Any]:
        """Delete a person everywhere the ledger keeps them: their turns (with every rating of
        them), the ratings they gave, their console tokens and sessions, their writes waiting in
        spool files and their dead letters. A tombstone records the request, with the hashes
        of `cache_keys(turns)` (what serving replicas drop from their caches) and their turn
        ids, so that no replay brings any of it back.

        Returns the counts, the turn ids (for the copies outside the ledger: job folders) and
        the spool files it could not rewrite because a live process holds them (their replay
        skips the person)."""
        person = person_hash(user_key)
        spooled = {}  # turns whose begin still waits in a spool: not in the database yet
        for entry in self.spool.read_all():
            data = entry.get("data") or {}
            if entry.get("kind") in ("begin", "record") and data.get("user_key") == user_key and data.get("id"):
                spooled[data["id"]] = _forgotten_turn(data)
        async with self.sessions() as session, session.begin():
            if self._postgres:
                # Replays take this lock shared around each write: none is halfway while the
                # tombstone goes in, and every later one sees it.
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FORGET_LOCK})
            stone = ForgottenRow(person=person, created_at=utcnow(), turn_ids=[], cache_keys=[])
            session.add(stone)
            await session.flush()  # the first write: on SQLite, replays wait from here on
            rows = list(
                await session.execute(
                    select(
                        TurnRow.id,
                        TurnRow.platform,
                        TurnRow.workspace,
                        TurnRow.channel,
                        TurnRow.thread_id,
                        TurnRow.private,
                    ).where(TurnRow.user_key == user_key)
                )
            )
            ids = [t.id for t in rows]
            on_turns = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                on_turns += (await session.execute(delete(FeedbackRow).where(FeedbackRow.turn_id.in_(chunk)))).rowcount
                await session.execute(delete(TurnRow).where(TurnRow.id.in_(chunk)))
            by_them = (await session.execute(delete(FeedbackRow).where(FeedbackRow.rater_key == user_key))).rowcount
            tokens = (
                await session.execute(delete(ConsoleTokenRow).where(ConsoleTokenRow.user_key == user_key))
            ).rowcount
            sessions = (
                await session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.user_key == user_key))
            ).rowcount
            turns = [ForgottenTurn(t.id, t.platform, t.workspace, t.channel, t.thread_id, t.private) for t in rows]
            turns += [t for t in spooled.values() if t.id not in set(ids)]
            all_ids = set(ids) | set(spooled)
            stone.turn_ids = sorted(all_ids)
            stone.cache_keys = sorted({key_hash(k) for k in (cache_keys(turns) if cache_keys else [])})
        self._tombstones[stone.id] = _tombstone(stone)

        def drop(entry: Entry) -> bool:
            return concerns(entry, person, all_ids)

        async with self._spool_lock:
            rewrites = self.spool.rewrite(drop)
            dead = self.spool.rewrite_dead_letters(drop)
        metrics.LEDGER_SPOOLED.set(len(self.spool.entries()))
        metrics.LEDGER_DEAD_LETTER_ROWS.set(self.dead_letters())
        held = sorted(r.path.name for r in rewrites if not r.reached)
        return {
            "turns": len(ids),
            "ratings_of_their_turns": on_turns,
            "ratings_they_gave": by_them,
            "console_tokens": tokens,
            "console_sessions": sessions,
            "spooled_writes": sum(r.removed for r in rewrites),
            "dead_letters": dead,
            "spool_files_held_by_running_processes": held,
            "tombstone": stone.id,
            "turn_ids": sorted(all_ids),
        }

    async def tombstones(self) -> list[Tombstone]:
        """Every forget request on record, oldest first. Read incrementally: they never change,
        and forget commits them one at a time (under FORGET_LOCK), so ids only grow."""
        last = max(self._tombstones, default=0)
        async with self.sessions() as session:
            rows = await session.scalars(select(ForgottenRow).where(ForgottenRow.id > last).order_by(ForgottenRow.id))
            for row in rows:
                self._tombstones[row.id] = _tombstone(row)
        return [self._tombstones[i] for i in sorted(self._tombstones)]

    async def _turn_forgotten(self, turn_id: str | None) -> bool:
        return bool(turn_id) and any(turn_id in s.turn_ids for s in await self.tombstones())

    async def _refuse_if_forgotten(self, session: AsyncSession, entry: Entry, extra: set[str]) -> None:
        """Inside a replayed write's transaction, after the write: was its person forgotten after
        it was made? Then the transaction is rolled back."""
        people = entry_people(entry) | extra
        if not people:
            return
        hit = await session.scalar(
            select(ForgottenRow.id)
            .where(ForgottenRow.person.in_(sorted(people)), ForgottenRow.created_at > _entry_time(entry))
            .limit(1)
        )
        if hit is not None:
            raise Forgotten(f"its person was forgotten afterwards (tombstone {hit})")

    # --- health ----------------------------------------------------------------------------
    async def ping(self) -> bool:
        """True when the database answers; when it has come back, also migrates it (if start-up
        could not) and replays the spool (ours and any a gone process left)."""
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            if not self._migrated:
                await self.migrate()
        except LEDGER_ERRORS:
            self.available = False
            metrics.LEDGER_REACHABLE.set(0)
            return False
        self.available = True
        metrics.LEDGER_REACHABLE.set(1)
        await self.flush_spool()
        return True

    def spooled(self) -> int:
        """How many writes wait: in our spool, and in spool files no live process holds."""
        return len(self.spool.entries()) + sum(n for _path, n in self.spool.orphans())

    def dead_letters(self) -> int:
        """How many refused writes the dead-letter file holds (every process's)."""
        return len(self.spool.dead_letters())

    # --- writing, with the spool -----------------------------------------------------------
    async def _apply(self, kind: str, data: dict[str, Any], guard: Entry | None = None) -> None:
        """Write one entry in one transaction. `guard`: the spool entry being replayed, which
        must not land if its person was forgotten after it was made."""
        async with self.sessions() as session, session.begin():
            if guard is not None and self._postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": FORGET_LOCK})
            owner: set[str] = set()
            if kind == "feedback":
                data = dict(data)
                owner_check = data.pop("owner_check", False)
                turn = await session.get(TurnRow, data["turn_id"])
                if turn is None:
                    raise NotOnRecord(data["turn_id"], f"feedback for turn {data['turn_id']}, which is not on record")
                if owner_check and turn.user_key != data["rater_key"]:
                    raise NotTheirs(f"a spooled rating of turn {data['turn_id']} by someone it was not for")
                session.add(FeedbackRow(**{**data, "created_at": datetime.fromisoformat(data["created_at"])}))
                if is_lead_review(
                    data.get("rater_role"), data.get("score"), data.get("verdict"), data.get("correction")
                ):
                    turn.reviewed = True
                if data.get("thumb") == -1:
                    turn.risk = (turn.risk or 0) + 3
            elif kind in ("begin", "record"):
                values = {**data, "created_at": datetime.fromisoformat(data["created_at"])}
                if kind == "record":
                    values["completed_at"] = datetime.fromisoformat(data["completed_at"])
                    values["risk"] = turn_risk(values)
                else:
                    values["status"] = "pending"
                if await session.get(TurnRow, values["id"]) is None:
                    session.add(TurnRow(**values))
            elif kind == "finish":
                values = {**data, "completed_at": datetime.fromisoformat(data["completed_at"])}
                row = await session.get(TurnRow, values["id"])
                if row is None:
                    raise NotOnRecord(values["id"], f"turn {values['id']} was never begun")
                owner.add(person_hash(row.user_key))
                if (row.error or "").startswith("interrupted") and not values.get("error"):
                    # Another replica closed it while this one was cut off from the ledger and
                    # the user got an apology: the answer is on record now, and so is that.
                    values["error"] = row.error + "; its answer was recorded afterwards"
                for name, value in values.items():
                    if name != "id":
                        setattr(row, name, value)
                row.risk = turn_risk(values) + (row.risk or 0)
            else:
                raise ValueError(f"a spool entry of unknown kind {kind!r}")
            if guard is not None:
                await self._refuse_if_forgotten(session, guard, owner)

    def _entry(self, kind: str, data: dict[str, Any], who: Iterable[str] = ()) -> Entry:
        entry: Entry = {"kind": kind, "data": data, "at": utcnow().isoformat()}
        entry["who"] = sorted(entry_people(entry) | set(who))
        return entry

    async def _write(self, kind: str, data: dict[str, Any], who: Iterable[str] = ()) -> None:
        entry = self._entry(kind, data, who)
        if self.spool.waiting():
            # Earlier writes are waiting: keep the order by queueing behind them.
            await self._replay()
        if not self.spool.waiting():
            try:
                await self._apply(kind, data)
                self.available = True
                return
            except Exception as exc:
                if write_failure(exc) == "rejected":
                    if kind == "feedback" and isinstance(exc, LookupError):
                        raise  # the rater is told now (bot/ratings.py)
                    if await self._refused(entry, exc) != "outage":
                        return
                self.available = False
                log.warning(
                    "ledger.unavailable kind=%s turn=%s error=%s; spooling to %s",
                    kind,
                    entry_turn(entry),
                    type(exc).__name__,
                    self.spool.path.name,
                )
        async with self._spool_lock:
            self.spool.append([entry])
        metrics.LEDGER_SPOOLED.inc()

    async def _refused(self, entry: Entry, exc: Exception) -> str:
        """A write the database refused: dead-lettered, or dropped when it belongs to a turn
        forgotten since. "outage" when the ledger went away while finding out."""
        if isinstance(exc, NotTheirs):
            # a refusal, not bad data: requeueing it could never make it right
            log.warning("ledger.spool_entry_dropped reason=%s", exc)
            return "dropped"
        try:
            if isinstance(exc, NotOnRecord) and await self._turn_forgotten(exc.turn_id):
                log.info("ledger.write_dropped kind=%s turn=%s reason=forgotten", entry.get("kind"), exc.turn_id)
                return "dropped"
        except Exception as check:
            if write_failure(check) == "outage":
                return "outage"
            raise
        reason = describe(exc)
        self.spool.dead_letter(
            {**entry, "reason": reason, "dead_lettered_at": utcnow().isoformat(), "by": self.spool.owner}
        )
        metrics.LEDGER_DEAD_LETTERS.labels(str(entry.get("kind"))).inc()
        metrics.LEDGER_DEAD_LETTER_ROWS.set(self.dead_letters())
        log.error(
            "ledger.dead_lettered kind=%s turn=%s error=%s file=%s",
            entry.get("kind"),
            entry_turn(entry),
            type(exc).__name__,
            self.spool.dead_letter_path,
        )
        if entry.get("kind") == "finish" and not isinstance(exc, NotOnRecord):
            await self._close_refused(str(entry_turn(entry)), reason)
        return "dead"

    async def _close_refused(self, turn_id: str, reason: str) -> None:
        """A turn whose outcome the database refused would stay `pending` for ever (and look
        interrupted once its replica stops): close it as failed, saying where the outcome is."""
        try:
            async with self.sessions.begin() as session:
                await session.execute(
                    update(TurnRow)
                    .where(TurnRow.id == turn_id, TurnRow.status == "pending")
                    .values(
                        status="failed",
                        completed_at=utcnow(),
                        risk=TurnRow.risk + 2,
                        error=f"its outcome was refused by the ledger ({reason[:200]}); it is in "
                        f"{self.spool.dead_letter_path.name}",
                    )
                    .execution_options(synchronize_session=False)
                )
        except Exception as exc:  # noqa: BLE001 (the dead letter holds it either way)
            log.warning("ledger.close_refused_failed turn=%s error=%s", turn_id, type(exc).__name__)

    async def _replay_one(self, entry: Entry) -> str:
        """ "written", "forgotten", "dead", "dropped", or "outage" (stop: keep it and the rest)."""
        try:
            await self._apply(str(entry.get("kind")), entry.get("data") or {}, guard=entry)
            return "written"
        except Forgotten as exc:
            log.info("ledger.spool_entry_skipped kind=%s turn=%s reason=%s", entry.get("kind"), entry_turn(entry), exc)
            return "forgotten"
        except Exception as exc:
            if write_failure(exc) == "outage":
                self.available = False
                return "outage"
            return await self._refused(entry, exc)

    async def _replay(self) -> int:
        """Replay our spool in order: stop at an outage, dead-letter what the database refuses,
        skip what a forget request has reached. Returns how many writes landed."""
        async with self._spool_lock:
            entries = self.spool.entries()
            done = landed = 0
            try:
                for entry in entries:
                    outcome = await self._replay_one(entry)
                    if outcome == "outage":
                        break
                    done += 1
                    landed += outcome == "written"
            finally:
                # Also when cancelled (a readiness probe's timeout): what landed stays landed.
                if done:
                    self.spool.replace(entries[done:])
                metrics.LEDGER_SPOOLED.set(len(entries) - done)
            if done == len(entries):
                self.available = True
            if done:
                log.warning("ledger.spool_flushed writes=%d landed=%d remaining=%d", done, landed, len(entries) - done)
            return landed

    async def flush_spool(self) -> int:
        """Adopt the spool files of processes that are gone, then replay ours. Returns how many
        writes landed."""
        async with self._spool_lock:
            adopted = self.spool.adopt()
        if adopted:
            log.warning("ledger.spool_adopted writes=%d into=%s", adopted, self.spool.path.name)
        if not self.spool.waiting():
            return 0
        return await self._replay()

    async def close(self) -> None:
        """Release the spool (what still waits is adopted by a live process) and the engine."""
        self.spool.close()
        await self.engine.dispose()


def _forgotten_turn(data: dict[str, Any]) -> ForgottenTurn:
    return ForgottenTurn(
        str(data.get("id")),
        str(data.get("platform") or ""),
        str(data.get("workspace") or ""),
        str(data.get("channel") or ""),
        str(data.get("thread_id") or ""),
        bool(data.get("private")),
    )


def _tombstone(row: ForgottenRow) -> Tombstone:
    return Tombstone(
        row.id, row.person, _aware(row.created_at), frozenset(row.turn_ids or ()), frozenset(row.cache_keys or ())
    )
