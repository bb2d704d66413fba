"""The ledger's spool and its dead letters: plain JSON-lines files in one directory.

The spool holds writes that wait for the database. Each process writes its own file
(`ledger-spool-<host>-<pid>-<random>.jsonl`) and holds an exclusive `flock` on it while it
lives. A file whose lock is free belongs to a process that is gone (a pod that restarted, a CLI
that finished during an outage): a live process adopts it (takes the lock, moves the entries into
its own spool, removes the file) and replays them. So replicas can share one directory on a
ReadWriteMany volume without two of them replaying the same writes, and a restart loses none.
`flock` holds across nodes on NFSv4, EFS and CephFS.

The dead letters (`ledger-dead-letters.jsonl`, one file shared by every process, appended under
its lock) are writes the database refused: each with the reason, for an operator to look at,
fix and requeue (deploy/README.md).

An entry is `{"kind", "data", "at", "who"}`: what to write, when it was first written, and
hashes of the people it concerns (so a replay can tell a forgotten person's writes without the
spool naming them anywhere else). This module only moves lines between files; what an entry
means is the ledger's business.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Entry = dict[str, Any]

DEFAULT_NAME = "ledger"
FILE_MODE = 0o600  # spooled questions are personal data


def process_owner() -> str:
    """Host, pid and a random suffix (a restarted pod reuses its hostname and often its pid),
    in characters that are safe in a file name."""
    raw = f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def _encode(entries: list[Entry]) -> bytes:
    return "".join(json.dumps(e, default=str, ensure_ascii=False) + "\n" for e in entries).encode()


def _decode(raw: bytes) -> list[Entry]:
    entries = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                # A line cut short by a crash mid-write: kept, so nothing is silently dropped.
                entries.append({"kind": "unreadable", "data": {"line": line}})
    return entries


def _read_fd(fd: int) -> list[Entry]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return _decode(b"".join(chunks))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # adopted by another process meanwhile
        return 0.0


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_current(fd: int, path: Path) -> bool:
    """The descriptor still names the file at `path` (not one renamed over or removed since)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino and os.fstat(fd).st_nlink > 0
    except FileNotFoundError:
        return False


def _open_locked(path: Path) -> int | None:
    """An existing file, opened and locked; None when its owner holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return None
    if _try_lock(fd) and _is_current(fd, path):
        return fd
    os.close(fd)
    return None


def _create_locked(path: Path, entries: list[Entry]) -> int:
    """Write `entries` to a new file that appears at `path` already locked: it is written under
    a hidden name, locked, then renamed, so no other process can take a half-made file."""
    hidden = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.new")
    fd = os.open(hidden, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _encode(entries))
        os.fsync(fd)
        os.replace(hidden, path)
    except BaseException:
        os.close(fd)
        hidden.unlink(missing_ok=True)
        raise
    return fd


@contextmanager
def _shared_file(path: Path) -> Iterator[int]:
    """A file every process appends to, locked for this block (created when missing). A
    waiter that finds the file was replaced while it waited opens the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_current(fd, path):
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _drop_from(path: Path, entries: list[Entry], drop: Callable[[Entry], bool]) -> int:
    """Rewrite a locked file without the entries `drop` picks (the file goes when none is
    left); returns how many went."""
    kept = [e for e in entries if not drop(e)]
    if len(kept) != len(entries):
        if kept:
            os.close(_create_locked(path, kept))
        else:
            path.unlink(missing_ok=True)
    return len(entries) - len(kept)


@dataclass
class Rewrite:
    """What rewriting one spool file did."""

    path: Path
    removed: int
    reached: bool  # False: its owner is alive and holds it


class Spool:
    """This process's spool file, the orphaned ones it may adopt, and the dead letters.

    `location` is a directory (one file per process inside it), or, as before, a file path
    `<dir>/<name>.jsonl`: then `<dir>` is the directory, `<name>` (less a `-spool` suffix) names
    the files, and that file itself is adopted as a spool left by an older version."""

    def __init__(self, location: Path, owner: str | None = None) -> None:
        location = Path(location)
        if location.suffix == ".jsonl":
            self.directory = location.parent
            self.name = location.stem.removesuffix("-spool") or DEFAULT_NAME
            self.legacy: Path | None = location
        else:
            self.directory = location
            self.name = DEFAULT_NAME
            self.legacy = location / f"{DEFAULT_NAME}-spool.jsonl"
        self.owner = owner or process_owner()
        self.path = self.directory / f"{self.name}-spool-{self.owner}.jsonl"
        self.dead_letter_path = self.directory / f"{self.name}-dead-letters.jsonl"
        self._fd: int | None = None  # our own file, locked, while it holds entries

    # --- our own file ------------------------------------------------------------------------
    def waiting(self) -> bool:
        """True while writes of ours wait."""
        return self._fd is not None

    def entries(self) -> list[Entry]:
        return _read_fd(self._fd) if self._fd is not None else []

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = _create_locked(self.path, entries)
        else:
            os.write(self._fd, _encode(entries))

    def replace(self, entries: list[Entry]) -> None:
        """Keep only `entries` (what a replay could not write yet); none: the file goes."""
        old = self._fd
        if entries:
            self._fd = _create_locked(self.path, entries)
        else:
            self._fd = None
            self.path.unlink(missing_ok=True)
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Release our lock; writes still waiting stay in the file for another process."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- other processes' files --------------------------------------------------------------
    def others(self) -> list[Path]:
        """Every spool file of this name in the directory but ours."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob(f"{self.name}-spool-*.jsonl") if p != self.path]
        if self.legacy is not None and self.legacy.is_file():
            found.append(self.legacy)
        return sorted(found, key=lambda p: (_mtime(p), p.name))

    def _locked_others(self) -> Iterator[tuple[Path, int | None]]:
        """Each other spool file, with its lock held while the caller handles it; None for a
        file whose owner is alive (its lock is theirs)."""
        for path in self.others():
            fd = _open_locked(path)
            try:
                yield path, fd
            finally:
                if fd is not None:
                    os.close(fd)

    def orphans(self) -> list[tuple[Path, int]]:
        """(file, entries) of each spool file whose owner is gone."""
        return [(path, len(_read_fd(fd))) for path, fd in self._locked_others() if fd is not None]

    def adopt(self) -> int:
        """Move the entries of every orphaned file into ours and remove the file. Returns how
        many entries moved."""
        moved = 0
        for path, fd in self._locked_others():
            if fd is not None:
                entries = _read_fd(fd)
                self.append(entries)
                path.unlink(missing_ok=True)
                moved += len(entries)
        return moved

    def read_all(self) -> Iterator[Entry]:
        """Every entry in every spool file and in the dead letters, read without locks (for
        finding what concerns a person; what is found is then rewritten under the locks)."""
        yield from self.entries()
        for path in [*self.others(), self.dead_letter_path]:
            try:
                yield from _decode(path.read_bytes())
            except FileNotFoundError:
                continue

    def rewrite(self, drop: Callable[[Entry], bool]) -> list[Rewrite]:
        """Remove the entries `drop` picks from our file and from every orphaned one, each
        under its lock. Files whose owner is alive are not touched (reached=False)."""
        done = []
        if self._fd is not None:
            entries = self.entries()
            kept = [e for e in entries if not drop(e)]
            if len(kept) != len(entries):
                self.replace(kept)
            done.append(Rewrite(self.path, len(entries) - len(kept), True))
        for path, fd in self._locked_others():
            if fd is None:
                done.append(Rewrite(path, 0, not path.exists()))
            else:
                done.append(Rewrite(path, _drop_from(path, _read_fd(fd), drop), True))
        return done

    # --- dead letters ------------------------------------------------------------------------
    def dead_letter(self, entry: Entry) -> None:
        with _shared_file(self.dead_letter_path) as fd:
            os.write(fd, _encode([entry]))

    def dead_letters(self) -> list[Entry]:
        try:
            return _decode(self.dead_letter_path.read_bytes())
        except FileNotFoundError:
            return []

    def rewrite_dead_letters(self, drop: Callable[[Entry], bool]) -> int:
        """Remove the dead letters `drop` picks; returns how many went."""
        if not self.dead_letter_path.exists():
            return 0
        with _shared_file(self.dead_letter_path) as fd:
            return _drop_from(self.dead_letter_path, _read_fd(fd), drop)
