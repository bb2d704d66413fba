"""Forgotten people as the ledger and its spool name them: hashed keys, tombstones, and which
spooled write or dead letter concerns whom.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.ledger.rows import aware
from bot.ledger.spool import Entry

# --- forgotten people ------------------------------------------------------------------------

FORGET_LOCK = 7405111  # PostgreSQL advisory lock: forget (exclusive) against replays (shared)


USER_TAG_CHARS = 16


def person_hash(user_key: str) -> str:
    """How the tombstones and the spool name a person (SHA-256 of the user key), and, its first
    16 characters (`user_tag`), how an answer's cache key does."""
    return hashlib.sha256(user_key.encode()).hexdigest()


def user_tag(user_key: str) -> str:
    """The part of a cache key that names a person without spelling out their email, so that
    their entries can be found and removed when they ask to be forgotten."""
    return person_hash(user_key)[:USER_TAG_CHARS]


# A cache key to drop is named the same way (it may spell out a conversation or an email).
key_hash = person_hash


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


def entry_time(entry: Entry) -> datetime:
    try:
        return aware(datetime.fromisoformat(str(entry["at"])))
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
