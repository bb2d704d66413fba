"""`deskmate forget USER`: remove a person from every copy Deskmate keeps of them.

The copies: the ledger (their turns with every rating of them, the ratings they gave, console
tokens and sessions), the spool files and dead letters next to it, the job folders (the
exported records, the training and evaluation datasets and the gate's answers carry turn ids,
never user keys, so the person's turn ids are collected before their rows go), the adapters'
registry cards, the cache (histories, cached answers, rate counters, identity lookups, answer
messages) and the store (their directory entry and user-context facts).

Two copies live in other processes, and the ledger's tombstone reaches them: a running server's
in-process cache (every serving replica reads new tombstones on its heartbeat and purges its own
cache with `purge_cache`: bot/replicas.py), and spool files a running process holds (their
replay skips the person's writes made before the tombstone). What cannot be undone is said
plainly: an adapter trained on their turns keeps what it learnt.

Returns what was removed, where, and what could not be reached, for the admin to keep as the
record of the request.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select

from bot.answering.messages import IncomingMessage, Platform
from bot.deskmate import Deskmate, Records
from bot.ledger.rows import ReplicaRow
from bot.ledger.tombstones import USER_TAG_CHARS, ForgottenTurn, Tombstone, concerns, key_hash, person_hash
from bot.replicas import stale_window
from retrieval.cache import Cache, MemoryCache

log = logging.getLogger(__name__)

UNTRAINABLE = (
    "an adapter's weights cannot be untrained: retrain without these turns (they are "
    "gone from the ledger now) and retire these adapters"
)


def user_key_of(user: str) -> str:
    """The key the ledger holds for what an admin typed: a lower-cased email, or `platform:id`
    with the platform's id as the platform spells it (retrieval.users.user_key). Whatever else
    is typed is looked up as typed, never refused: forgetting must not fail on a stray colon."""
    user = user.strip()
    if "@" in user:
        return user.lower()
    platform, colon, rest = user.partition(":")
    return f"{platform.lower()}{colon}{rest.strip()}"


def cache_keys_of(user_key: str) -> Callable[[list[ForgottenTurn]], list[str]]:
    """The cache keys of a person's conversations, as the orchestrator and the Teams adapter
    write them (the tombstone keeps their hashes)."""

    def keys(turns: list[ForgottenTurn]) -> list[str]:
        found = []
        for t in turns:
            message = IncomingMessage(
                platform=cast(Platform, t.platform),  # as the ledger recorded it
                user_key=user_key,
                text="",
                workspace=t.workspace,
                channel=t.channel,
                thread_id=t.thread_id,
            )
            found.append(f"hist:{message.conversation_key}")
            if t.platform == "teams" and t.private and t.thread_id:
                # where to post into their personal chat later: it names them
                found.append(f"teams-conversation:{t.thread_id}")
        return found

    return keys


async def purge_cache(cache: Cache, stone: Tombstone) -> dict[str, int]:
    """Drop what a cache holds of a forgotten person, knowing only the tombstone's hashes."""
    tag = stone.person[:USER_TAG_CHARS]  # user_tag(user_key), from the hash the tombstone keeps
    answers = await cache.keys(f"answer:*:{tag}:*")
    histories = [
        k
        for pattern in ("hist:*", "teams-conversation:*")
        for k in await cache.keys(pattern)
        if key_hash(k) in stone.cache_keys
    ]
    counters = [
        k for k in await cache.keys("rate:*") if person_hash(k.removeprefix("rate:").rsplit(":", 1)[0]) == stone.person
    ]
    identities = []
    for pattern in ("slack-user:*", "teams-user:*"):
        for cache_key in await cache.keys(pattern):
            raw = await cache.get(cache_key)
            email = json.loads(raw)[0] if raw else None
            if isinstance(email, str) and person_hash(email.strip().lower()) == stone.person:
                identities.append(cache_key)
    messages = []
    for cache_key in await cache.keys("answer-msg:*"):
        raw = await cache.get(cache_key)
        if raw and raw.decode(errors="replace") in stone.turn_ids:
            messages.append(cache_key)
    await cache.delete(*answers, *histories, *counters, *identities, *messages)
    return {
        "cached_histories": len(histories),
        "cached_answers": len(answers),
        "cached_identities": len(identities),
        "cached_rate_counters": len(counters),
        "cached_answer_messages": len(messages),
    }


# --- job folders and the adapter registry ----------------------------------------------------

TRAINING_SPLITS = ("train.jsonl", "kto_train.jsonl")


@dataclass
class FileCopies:
    """What forgetting did to the files of job folders and the registry."""

    records: int = 0  # JSON lines removed (exports, datasets, the gate's answers, scratch spools)
    mentions: int = 0  # turn ids removed from JSON documents (cards, reports, outcomes, metadata)
    scratch_turns: int = 0  # rows removed from the gate's scratch ledgers
    folders: set[str] = field(default_factory=set)
    trained_jobs: set[str] = field(default_factory=set)
    unreachable: list[str] = field(default_factory=list)


def _scrub(value: Any, ids: set[str]) -> tuple[Any, int]:
    """`value` without what names one of `ids` (list items, keys, records with that turn_id)."""
    if isinstance(value, dict):
        removed, out = 0, {}
        for key, item in value.items():
            if key in ids:
                removed += 1
                continue
            out[key], n = _scrub(item, ids)
            removed += n
        return out, removed
    if isinstance(value, list):
        removed, kept = 0, []
        for item in value:
            names = (
                item in ids
                if isinstance(item, str)
                else (isinstance(item, dict) and (item.get("turn_id") in ids or item.get("id") in ids))
            )
            if names:
                removed += 1
                continue
            item, n = _scrub(item, ids)
            kept.append(item)
            removed += n
        return kept, removed
    if isinstance(value, str) and value in ids:
        return "(forgotten)", 1
    return value, 0


def _replace_text(path: Path, text: str) -> None:
    """Rewrite a file atomically, keeping its mode (registry files are read-only)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    tmp = path.with_name(f".{path.name}.forget")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    tmp.replace(path)


def _forget_in_lines(path: Path, ids: set[str], person: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)
            continue
        if isinstance(record, dict) and (record.get("turn_id") in ids or concerns(record, person, ids)):
            continue
        kept.append(line)
    if len(kept) != len(lines):
        _replace_text(path, "".join(kept))
    return len(lines) - len(kept)


def _forget_in_document(path: Path, ids: set[str]) -> int:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return 0
    scrubbed, removed = _scrub(document, ids)
    if removed:
        _replace_text(path, json.dumps(scrubbed, indent=2, default=str) + "\n")
    return removed


def _forget_in_scratch_ledger(path: Path, user_key: str) -> int:
    """The gate's scratch ledgers (`eval-*.db`) hold the held-out questions under their askers'
    keys while a job runs (bot/training/retrain.py removes them after; a killed job leaves them)."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM ratings WHERE turn_id IN (SELECT id FROM turns WHERE user_key = ?)", (user_key,))
        return db.execute("DELETE FROM turns WHERE user_key = ?", (user_key,)).rowcount


def forget_in_files(jobs_dir: Path, adapters_dir: Path, skip: set[Path], user_key: str, ids: set[str]) -> FileCopies:
    """Remove the person's records from every job folder and their turn ids from every adapter's
    card. Files that cannot be rewritten here (a read-only mount) are named, not skipped
    silently."""
    done = FileCopies()
    person = person_hash(user_key)
    folders = (
        sorted(p for p in jobs_dir.iterdir() if p.is_dir() and p.resolve() not in skip) if jobs_dir.is_dir() else []
    )
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or any(part.startswith("checkpoint-") for part in path.parts):
                continue
            try:
                if path.suffix in (".jsonl", ".part"):
                    n = _forget_in_lines(path, ids, person)
                    done.records += n
                    if n and path.parent.name == "dataset" and path.name in TRAINING_SPLITS:
                        done.trained_jobs.add(folder.name)
                elif path.suffix == ".json":
                    n = _forget_in_document(path, ids)
                    done.mentions += n
                elif path.name.startswith("eval-") and path.suffix == ".db":
                    n = _forget_in_scratch_ledger(path, user_key)
                    done.scratch_turns += n
                else:
                    continue
            except (OSError, sqlite3.Error, UnicodeDecodeError) as exc:
                done.unreachable.append(f"{path}: {type(exc).__name__}: {exc}"[:300])
                continue
            if n:
                done.folders.add(folder.name)
    for metadata in sorted(adapters_dir.glob("*/metadata.json")) if adapters_dir.is_dir() else []:
        try:
            n = _forget_in_document(metadata, ids)
        except OSError as exc:
            done.unreachable.append(f"{metadata}: {type(exc).__name__}: {exc}"[:300])
            continue
        done.mentions += n
    return done


def adapters_trained_on(adapters_dir: Path, jobs: set[str]) -> list[str]:
    """Registered adapters whose training job's dataset held the person's turns."""
    found = []
    for metadata in sorted(adapters_dir.glob("*/metadata.json")) if adapters_dir.is_dir() else []:
        try:
            job = json.loads(metadata.read_text(encoding="utf-8")).get("job_id")
        except (OSError, ValueError):
            continue
        if job in jobs:
            found.append(metadata.parent.name)
    return found


# --- the whole request -----------------------------------------------------------------------


async def _live_servers(deskmate: Deskmate | Records, every: float) -> int:
    cutoff = datetime.now(UTC) - stale_window(every)
    async with deskmate.ledger.sessions() as session:
        return len(list(await session.scalars(select(ReplicaRow.id).where(ReplicaRow.seen_at >= cutoff))))


async def forget(deskmate: Deskmate | Records, user: str) -> dict[str, Any]:
    key = user_key_of(user)
    settings = deskmate.retrieval.settings
    cache = deskmate.retrieval.cache
    report = await deskmate.ledger.forget_user(key, cache_keys_of(key))
    ids = set(report.pop("turn_ids"))
    stone = next(s for s in await deskmate.ledger.tombstones() if s.id == report["tombstone"])
    not_reached: list[str] = []
    held = report.pop("spool_files_held_by_running_processes")
    if held:
        not_reached.append(
            f"spool files held by running processes ({', '.join(held)}): their "
            "replay skips this person's writes (tombstone)"
        )

    files = forget_in_files(
        settings.resolved_jobs_dir(), settings.resolved_adapters_dir(), {settings.resolved_model_cache()}, key, ids
    )
    report["job_records"] = files.records + files.scratch_turns
    report["job_folders"] = sorted(files.folders)
    report["turn_ids_in_cards_and_reports"] = files.mentions
    trained = adapters_trained_on(settings.resolved_adapters_dir(), files.trained_jobs)
    report["adapters_trained_on_their_turns"] = trained
    if trained:
        report["adapters_note"] = UNTRAINABLE
    not_reached += files.unreachable

    report.update(await purge_cache(cache, stone))
    if isinstance(cache, MemoryCache):
        # This process's cache is not the servers': each serving replica purges its own.
        every = settings.replica_heartbeat_seconds
        live = await _live_servers(deskmate, every)
        report["running_servers"] = (
            f"{live} alive: each drops this person's cached answers and "
            f"history within one heartbeat ({every:g} s), tombstone {stone.id}"
        )
    report["directory_entries_and_facts"] = await deskmate.retrieval.store.delete_user(key)
    report["not_reachable"] = not_reached
    report["outside_deskmate"] = (
        "exports saved with `deskmate export ratings` or the console's CSV "
        "download carry their turns: delete those copies where they were saved"
    )
    log.warning(
        "forget.done person=%s tombstone=%s turns=%s job_records=%s unreachable=%d",
        stone.person[:16],
        stone.id,
        report["turns"],
        report["job_records"],
        len(not_reached),
    )
    return report
