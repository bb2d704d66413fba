"""The records retrieval passes around: chunks, hits, documents, users. Plain dataclasses."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The access group every user has. A document without groups is visible to everyone.
EVERYONE = "everyone"


def normalise_groups(groups: Sequence[str] | None) -> tuple[str, ...]:
    """Lower-cased, de-duplicated, sorted groups; an empty list means public."""
    cleaned = sorted({g.strip().lower() for g in (groups or []) if g and g.strip()})
    return tuple(cleaned) if cleaned else (EVERYONE,)


def reader_groups(groups: Sequence[str] | None) -> tuple[str, ...]:
    """The groups a reader may see: their own plus `everyone`."""
    return tuple(sorted({EVERYONE, *(g.strip().lower() for g in (groups or []) if g.strip())}))


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage, carrying everything needed to cite it."""

    id: str
    doc_id: str
    title: str
    heading: str
    url: str
    groups: tuple[str, ...]
    text: str
    position: int

    @property
    def search_text(self) -> str:
        """What is embedded and indexed: title and heading path give a passage its topic."""
        head = " > ".join(p for p in (self.title, self.heading) if p)
        return f"{head}\n{self.text}" if head else self.text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = list(self.groups)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        return cls(
            id=data["id"],
            doc_id=data["doc_id"],
            title=data.get("title") or "",
            heading=data.get("heading") or "",
            url=data.get("url") or "",
            groups=tuple(data.get("groups") or (EVERYONE,)),
            text=data["text"],
            position=int(data.get("position") or 0),
        )


@dataclass(frozen=True)
class DocumentRecord:
    """What the store remembers about an ingested document, to make ingestion idempotent."""

    doc_id: str
    title: str
    url: str
    groups: tuple[str, ...]
    content_hash: str
    source: str
    chunk_count: int
    ingested_at: str


@dataclass(frozen=True)
class Hit:
    """A chunk with the score the ranking gave it (higher is better)."""

    chunk: Chunk
    score: float


@dataclass(frozen=True)
class RankedHits:
    """Hybrid results plus the best raw vector similarity, the store-independent confidence."""

    hits: list[Hit]
    top_similarity: float


@dataclass(frozen=True)
class UserProfile:
    """An employee from the directory. `key` is the canonical user key (see `users.user_key`)."""

    key: str
    name: str = ""
    email: str = ""
    department: str = ""
    location: str = ""
    role: str = ""
    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["groups"], data["devices"] = list(self.groups), list(self.devices)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> UserProfile:
        data = json.loads(raw)
        data["groups"] = tuple(data.get("groups") or ())
        data["devices"] = tuple(data.get("devices") or ())
        return cls(**data)


@dataclass(frozen=True)
class StoreStats:
    documents: int
    chunks: int
    users: int
    kb_version: int
    chunks_by_group: dict[str, int]


@dataclass(frozen=True)
class DocumentWrite:
    """A document's new state: its record, its chunks and their vectors (row-aligned)."""

    record: DocumentRecord
    chunks: Sequence[Chunk]
    vectors: np.ndarray

    def pairs(self) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Each chunk with its vector; a write whose counts differ is refused before anything
        is stored (every backend writes through this)."""
        if len(self.chunks) != len(self.vectors):
            raise ValueError(f"{self.record.doc_id}: {len(self.chunks)} chunks, {len(self.vectors)} vectors")
        return zip(self.chunks, self.vectors, strict=True)
