"""What the ledger stores: every subsystem's tables as SQLAlchemy rows (the schema itself is made
by the Alembic migrations in bot/ledger/migrations, never by `create_all`), and the two halves of
a turn's record as the orchestrator hands them over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A time read back from a row, in UTC: SQLite returns naive times, PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    groups: Mapped[list[Any]] = mapped_column(JSON, default=list)
    question: Mapped[str] = mapped_column(Text)
    search_query: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    answer: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    retrieved: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cited: Mapped[list[Any]] = mapped_column(JSON, default=list)
    user_facts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    prompt: Mapped[list[Any]] = mapped_column(JSON, default=list)
    prompt_version: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text, default="")
    adapter_version: Mapped[str] = mapped_column(Text, default="")
    kb_version: Mapped[int] = mapped_column(Integer, default=0)
    confidence: Mapped[float | None] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    risk: Mapped[int] = mapped_column(Integer, default=0)  # review-queue order: see turn_risk()
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False)  # a lead or admin rated it
    replica: Mapped[str] = mapped_column(String(80), default="")  # the server process answering it
    # How the answer was made ("quote" or "generate"), each sentence's support in the passages
    # (bot/answering/grounding.py), and how many sentences the passages did not support.
    strategy: Mapped[str] = mapped_column(String(16), default="")
    support: Mapped[list[Any]] = mapped_column(JSON, default=list)
    unsupported: Mapped[int] = mapped_column(Integer, default=0, index=True)
    # Whether the passages answer the question, 0-1 (bot/answering/answerability.py): kept so its
    # threshold can be calibrated on rated turns.
    answerability: Mapped[float | None] = mapped_column(Float)

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
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


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
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    active_slot: Mapped[str | None] = mapped_column(String(32))  # = kind while queued/running
    runner: Mapped[str] = mapped_column(String(200), default="")  # the replica id running it (bot/replicas.py)
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
    turn_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # their turns, for spooled finishes
    cache_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)  # key_hash() of each cache key


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
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    user_facts: list[str] = field(default_factory=list)
    prompt: list[dict[str, Any]] = field(default_factory=list)
    prompt_version: str = ""
    model: str = ""
    adapter_version: str = ""
    kb_version: int = 0
    confidence: float | None = None
    cache_hit: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)
    strategy: str = ""
    support: list[dict[str, Any]] = field(default_factory=list)
    unsupported: int = 0
    answerability: float | None = None
    completed_at: datetime = field(default_factory=utcnow)


def new_turn_ids() -> tuple[str, str]:
    """A turn id and the short reference a user can quote to support ("ref 3F9A2C1B")."""
    turn_id = str(uuid.uuid4())
    return turn_id, turn_id.replace("-", "")[:8].upper()
