"""The ledger: every turn exactly as served, and (for the later issues) ratings, adapter
versions and retraining jobs. SQLAlchemy 2 async; SQLite by default, PostgreSQL in production;
the schema is made by Alembic migrations (`bot/migrations`), never by `create_all`.

A turn is written twice: `begin_turn` before generation starts (so a crash still leaves the
question and its error on record) and `finish_turn` after. When the database cannot be reached,
both writes go to a local spool file and are replayed, in order, once it answers again: the
answer is still given and nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot import metrics

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
    workspace: Mapped[str] = mapped_column(String(128), default="")
    channel: Mapped[str] = mapped_column(String(128), default="", index=True)
    thread_id: Mapped[str] = mapped_column(String(128), default="")
    user_key: Mapped[str] = mapped_column(String(320), index=True)
    user_name: Mapped[str] = mapped_column(String(200), default="")
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
    prompt_version: Mapped[str] = mapped_column(String(16), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    adapter_version: Mapped[str] = mapped_column(String(200), default="")
    kb_version: Mapped[int] = mapped_column(Integer, default=0)
    confidence: Mapped[float | None] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[dict] = mapped_column(JSON, default=dict)
    risk: Mapped[int] = mapped_column(Integer, default=0)  # review-queue order: see turn_risk()
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False)  # a lead or admin rated it
    replica: Mapped[str] = mapped_column(String(80), default="")  # the server process answering it

    __table_args__ = (Index("ix_turns_queue", "reviewed", text("risk DESC"), text("created_at DESC")),
                      Index("ix_turns_thread", "platform", "workspace", "channel", "thread_id", "created_at"))


class FeedbackRow(Base):
    """A rating of a turn: a thumb, a lead's score/verdict/note/correction. Rows are never
    updated: re-rating adds a row, and the newest lead rating is the one training uses."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    rater_key: Mapped[str] = mapped_column(String(320), index=True)
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
    user_key: Mapped[str] = mapped_column(String(320))
    role: Mapped[str | None] = mapped_column(String(16))  # set for the first-start admin token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdapterRow(Base):
    """A trained adapter version (immutable name) and its state."""

    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    base_model: Mapped[str] = mapped_column(String(200))
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
    actor: Mapped[str] = mapped_column(String(320), default="")
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
    actor: Mapped[str] = mapped_column(String(320), default="")
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


LEDGER_ERRORS = (OperationalError, DBAPIError, OSError, ConnectionError, asyncio.TimeoutError)


class Ledger:
    """Turns (and, later, ratings, adapters and jobs) in SQL, with a spool for outages."""

    def __init__(self, url: str, spool_path: Path, *, connect_timeout: float = 3.0) -> None:
        self.url = normalise_url(url)
        self.spool_path = spool_path
        connect_args: dict[str, Any] = {}
        if self.url.startswith("postgresql+asyncpg"):
            connect_args = {"timeout": connect_timeout}
        elif self.url.startswith("sqlite"):
            connect_args = {"timeout": 15}
        self.engine: AsyncEngine = create_async_engine(
            self.url, connect_args=connect_args, pool_pre_ping=True,
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

    # --- schema ----------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from bot.migrations.runner import upgrade

        if self.url.startswith("sqlite"):
            db_path = self.url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if self.url.startswith("postgresql"):
                # Replicas starting together would otherwise race to create the same tables;
                # the lock is released with this transaction.
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7405110)")
            await conn.run_sync(upgrade)
        self._migrated = True

    # --- turns -----------------------------------------------------------------------------
    async def begin_turn(self, start: TurnStart) -> None:
        """Record the question before generation starts (spooled when the database is down)."""
        await self._write("begin", {**asdict(start), "created_at": start.created_at.isoformat(),
                                    "replica": self.replica})

    async def finish_turn(self, turn_id: str, end: TurnEnd) -> None:
        """Record the outcome (spooled when the database is down)."""
        await self._write("finish", {"id": turn_id, **asdict(end), "completed_at": end.completed_at.isoformat()})

    async def record_turn(self, start: TurnStart, end: TurnEnd) -> None:
        """Record a turn that is already over (a cache hit, a refusal) in one write."""
        await self._write("record", {
            **asdict(start), "created_at": start.created_at.isoformat(),
            **asdict(end), "completed_at": end.completed_at.isoformat(),
        })

    async def get_turn(self, turn_id: str) -> TurnRow | None:
        async with self.sessions() as session:
            return await session.get(TurnRow, turn_id)

    async def recent_turns(self, limit: int = 50) -> list[TurnRow]:
        async with self.sessions() as session:
            rows = await session.scalars(select(TurnRow).order_by(TurnRow.created_at.desc()).limit(limit))
            return list(rows)

    async def record_feedback(self, turn_id: str, rater_key: str, *, platform: str,
                              thumb: int | None = None, note: str | None = None, rater_role: str = "employee",
                              score: int | None = None, verdict: str | None = None,
                              correction: str | None = None, owner_check: bool = False) -> None:
        """A rating, as a new row (re-rating keeps the history). Spooled like turns when the
        database is down, because a click or a lead's review cannot be asked for again.
        Validation and permissions are `bot.ratings`' job; this only stores."""
        await self._write("feedback", {"turn_id": turn_id, "rater_key": rater_key, "platform": platform,
                                       "thumb": thumb, "note": note, "rater_role": rater_role, "score": score,
                                       "verdict": verdict, "correction": correction,
                                       "created_at": utcnow().isoformat(),
                                       **({"owner_check": True} if owner_check else {})})

    async def ratings_of(self, turn_id: str) -> list[FeedbackRow]:
        """Every rating of a turn, oldest first."""
        async with self.sessions() as session:
            rows = await session.scalars(select(FeedbackRow).where(FeedbackRow.turn_id == turn_id)
                                         .order_by(FeedbackRow.created_at, FeedbackRow.id))
            return list(rows)

    async def forget_user(self, user_key: str) -> dict[str, Any]:
        """Delete a person's turns (with every rating of them) and the ratings they gave.
        Returns the counts and the conversations their turns were in (their cached history)."""
        async with self.sessions() as session, session.begin():
            turns = list(await session.execute(select(TurnRow.id, TurnRow.platform, TurnRow.workspace,
                                                      TurnRow.channel, TurnRow.thread_id)
                                               .where(TurnRow.user_key == user_key)))
            ids = [t.id for t in turns]
            on_turns = by_them = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                on_turns += (await session.execute(delete(FeedbackRow).where(FeedbackRow.turn_id.in_(chunk)))).rowcount
                await session.execute(delete(TurnRow).where(TurnRow.id.in_(chunk)))
            by_them = (await session.execute(delete(FeedbackRow).where(FeedbackRow.rater_key == user_key))).rowcount
            await session.execute(delete(ConsoleTokenRow).where(ConsoleTokenRow.user_key == user_key))
        conversations = sorted({f"{t.platform}:{t.workspace}:{t.channel}:{t.thread_id or user_key}" for t in turns})
        return {"turns": len(ids), "ratings_of_their_turns": on_turns, "ratings_they_gave": by_them,
                "conversations": conversations}

    async def ping(self) -> bool:
        """True when the database answers; when it has come back, also migrates it (if start-up
        could not) and flushes the spool."""
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            if not self._migrated:
                await self.migrate()
        except LEDGER_ERRORS:
            self.available = False
            return False
        self.available = True
        await self.flush_spool()
        return True

    # --- writing, with the spool -----------------------------------------------------------
    async def _apply(self, kind: str, data: dict[str, Any]) -> None:
        async with self.sessions() as session, session.begin():
            if kind == "feedback":
                data = dict(data)
                owner_check = data.pop("owner_check", False)
                turn = await session.get(TurnRow, data["turn_id"])
                if turn is None:
                    raise LookupError(f"feedback for turn {data['turn_id']}, which is not on record")
                if owner_check and turn.user_key != data["rater_key"]:
                    raise LookupError(f"a spooled rating of turn {data['turn_id']} by someone it was not for")
                session.add(FeedbackRow(**{**data, "created_at": datetime.fromisoformat(data["created_at"])}))
                if is_lead_review(data.get("rater_role"), data.get("score"), data.get("verdict"),
                                  data.get("correction")):
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
            else:
                values = {**data, "completed_at": datetime.fromisoformat(data["completed_at"])}
                row = await session.get(TurnRow, values["id"])
                if row is None:
                    raise LookupError(f"turn {values['id']} was never begun")
                if (row.error or "").startswith("interrupted") and not values.get("error"):
                    # Another replica closed it while this one was cut off from the ledger and
                    # the user got an apology: the answer is on record now, and so is that.
                    values["error"] = row.error + "; its answer was recorded afterwards"
                for name, value in values.items():
                    if name != "id":
                        setattr(row, name, value)
                row.risk = turn_risk(values) + (row.risk or 0)

    async def _write(self, kind: str, data: dict[str, Any]) -> None:
        if self.spool_path.exists():
            # Earlier writes are waiting: keep the order by queueing behind them.
            await self.flush_spool()
        if not self.spool_path.exists():
            try:
                await self._apply(kind, data)
                self.available = True
                return
            except LEDGER_ERRORS as exc:
                self.available = False
                log.warning("ledger.unavailable turn=%s error=%s; spooling to %s",
                            data.get("id"), type(exc).__name__, self.spool_path)
        async with self._spool_lock:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, "data": data}, default=str) + "\n")
            metrics.LEDGER_SPOOLED.inc()

    def spooled(self) -> int:
        """How many writes wait in the spool."""
        if not self.spool_path.exists():
            return 0
        with open(self.spool_path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())

    async def flush_spool(self) -> int:
        """Replay spooled writes in order; stops at the first failure. Returns how many landed."""
        async with self._spool_lock:
            if not self.spool_path.exists():
                return 0
            lines = [line for line in self.spool_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            done = 0
            for line in lines:
                entry = json.loads(line)
                try:
                    await self._apply(entry["kind"], entry["data"])
                except LEDGER_ERRORS:
                    self.available = False
                    break
                except LookupError as exc:
                    log.error("ledger.spool_entry_dropped reason=%s", exc)
                done += 1
            rest = lines[done:]
            metrics.LEDGER_SPOOLED.set(len(rest))
            if rest:
                tmp = self.spool_path.with_suffix(".tmp")
                tmp.write_text("\n".join(rest) + "\n", encoding="utf-8")
                tmp.replace(self.spool_path)
            else:
                self.spool_path.unlink()
                self.available = True
            if done:
                log.warning("ledger.spool_flushed writes=%d remaining=%d", done, len(rest))
            return done

    async def close(self) -> None:
        await self.engine.dispose()
