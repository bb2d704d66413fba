"""The ledger: every turn exactly as served, ratings, adapter versions, retraining jobs,
replicas and tombstones (bot/ledger/rows.py). SQLAlchemy 2 async; SQLite by default, PostgreSQL in production;
the schema is made by Alembic migrations (`bot/ledger/migrations`), never by `create_all`.

A turn is written twice: `begin_turn` before generation starts (so a crash still leaves the
question and its error on record) and `finish_turn` after. When the database cannot be reached,
both writes go to this process's spool file (bot/ledger/spool.py) and are replayed, in order, once it
answers again: the answer is still given and nothing is lost. A write the database *refuses*
(a value it cannot store) is not an outage: it goes to the dead-letter file with the reason and
the writes behind it go on (`write_failure` tells the two apart, in one place).

Forgetting a person leaves a tombstone (`forgotten`): replays skip the person's writes made
before it, from any process's spool, so a spooled write never brings them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    delete,
    event,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot import metrics
from bot.ledger.failures import LEDGER_ERRORS, Forgotten, NotOnRecord, NotTheirs, describe, write_failure
from bot.ledger.migrations.runner import upgrade
from bot.ledger.review import is_lead_review, turn_risk
from bot.ledger.rows import (
    ConsoleSessionRow,
    ConsoleTokenRow,
    FeedbackRow,
    ForgottenRow,
    TurnEnd,
    TurnRow,
    TurnStart,
    aware,
    utcnow,
)
from bot.ledger.spool import Entry, Spool
from bot.ledger.tombstones import (
    FORGET_LOCK,
    ForgottenTurn,
    Tombstone,
    concerns,
    entry_people,
    entry_time,
    entry_turn,
    key_hash,
    person_hash,
)

log = logging.getLogger(__name__)


def rows_affected(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE touched (SQLAlchemy types `execute` as a plain Result;
    for these statements it is a CursorResult, which counts)."""
    return cast("CursorResult[Any]", result).rowcount


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


# How many begun-but-unfinished turns a process remembers the asker of (for the spool entry of
# the finish, which carries no user key); a turn that is never finished must not grow it.
OWNERS_REMEMBERED = 10_000


class Ledger:
    """Turns, ratings and tombstones in SQL, with a spool for outages.

    `spool` is the spool directory (one file per process), or, as older callers pass it, a file
    path whose folder and name the files are made from (bot/ledger/spool.py)."""

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
                on_turns += rows_affected(
                    await session.execute(delete(FeedbackRow).where(FeedbackRow.turn_id.in_(chunk)))
                )
                await session.execute(delete(TurnRow).where(TurnRow.id.in_(chunk)))
            by_them = rows_affected(await session.execute(delete(FeedbackRow).where(FeedbackRow.rater_key == user_key)))
            tokens = rows_affected(
                await session.execute(delete(ConsoleTokenRow).where(ConsoleTokenRow.user_key == user_key))
            )
            sessions = rows_affected(
                await session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.user_key == user_key))
            )
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
            .where(ForgottenRow.person.in_(sorted(people)), ForgottenRow.created_at > entry_time(entry))
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
        write = WRITERS.get(kind)
        if write is None:
            raise ValueError(f"a spool entry of unknown kind {kind!r}")
        async with self.sessions() as session, session.begin():
            if guard is not None and self._postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": FORGET_LOCK})
            owner = await write(session, data)
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
                        raise  # the rater is told now (bot/feedback/ratings.py)
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
        except Exception as exc:  # noqa: BLE001 (write_failure sorts every error: outage or refused row)
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
        row.id, row.person, aware(row.created_at), frozenset(row.turn_ids or ()), frozenset(row.cache_keys or ())
    )


# --- one write of each kind, inside the caller's transaction ------------------------------------
# Each returns the hashes of people it touched beyond those the entry names (a finish carries
# no user key: its turn's asker), for the tombstone check of a replay.


async def _write_feedback(session: AsyncSession, data: dict[str, Any]) -> set[str]:
    data = dict(data)
    owner_check = data.pop("owner_check", False)
    turn = await session.get(TurnRow, data["turn_id"])
    if turn is None:
        raise NotOnRecord(data["turn_id"], f"feedback for turn {data['turn_id']}, which is not on record")
    if owner_check and turn.user_key != data["rater_key"]:
        raise NotTheirs(f"a spooled rating of turn {data['turn_id']} by someone it was not for")
    session.add(FeedbackRow(**{**data, "created_at": datetime.fromisoformat(data["created_at"])}))
    if is_lead_review(data.get("rater_role"), data.get("score"), data.get("verdict"), data.get("correction")):
        turn.reviewed = True
    if data.get("thumb") == -1:
        turn.risk = (turn.risk or 0) + 3
    return set()


async def _write_begin(session: AsyncSession, data: dict[str, Any]) -> set[str]:
    values = {**data, "created_at": datetime.fromisoformat(data["created_at"]), "status": "pending"}
    if await session.get(TurnRow, values["id"]) is None:
        session.add(TurnRow(**values))
    return set()


async def _write_record(session: AsyncSession, data: dict[str, Any]) -> set[str]:
    values = {
        **data,
        "created_at": datetime.fromisoformat(data["created_at"]),
        "completed_at": datetime.fromisoformat(data["completed_at"]),
    }
    values["risk"] = turn_risk(values)
    if await session.get(TurnRow, values["id"]) is None:
        session.add(TurnRow(**values))
    return set()


async def _write_finish(session: AsyncSession, data: dict[str, Any]) -> set[str]:
    values = {**data, "completed_at": datetime.fromisoformat(data["completed_at"])}
    row = await session.get(TurnRow, values["id"])
    if row is None:
        raise NotOnRecord(values["id"], f"turn {values['id']} was never begun")
    if (row.error or "").startswith("interrupted") and not values.get("error"):
        # Another replica closed it while this one was cut off from the ledger and the user got
        # an apology: the answer is on record now, and so is that.
        values["error"] = f"{row.error}; its answer was recorded afterwards"
    for name, value in values.items():
        if name != "id":
            setattr(row, name, value)
    row.risk = turn_risk(values) + (row.risk or 0)
    return {person_hash(row.user_key)}


WRITERS: dict[str, Callable[[AsyncSession, dict[str, Any]], Awaitable[set[str]]]] = {
    "begin": _write_begin,
    "finish": _write_finish,
    "record": _write_record,
    "feedback": _write_feedback,
}
