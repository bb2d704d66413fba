"""Why a ledger write failed, decided in one place: the database away (spool and replay in
order) or this one row refused (dead-letter it and go on); and the outcomes a write can have.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

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


class Forgotten(Exception):
    """A spooled write of a person forgotten after it was made: it must not land."""
