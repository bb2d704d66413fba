"""The embedded knowledge store: LanceDB on local disk, no server.

LanceDB gives us vector search (with an IVF-HNSW index once the table is big enough), a
native BM25 full-text index, and SQL filters over list columns (`array_has_any`) backed by a
label-list index, all in-process. Writes are versioned commits, so one `merge_insert` replaces
a batch of documents atomically.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, BTree, IvfHnswSq, LabelList
from lancedb.table import AsyncTable

from retrieval.records import (
    Chunk,
    DocumentRecord,
    DocumentWrite,
    Hit,
    StoreStats,
    UserProfile,
)
from retrieval.store import KnowledgeStore

#: The BM25 analyzer, spelt out: lancedb's defaults have changed between releases (before 0.2x it
#: neither stemmed nor dropped stop words), and questions rarely use a manual's exact word forms
#: ("connecting" for "connect"). English stemming and stop words, accents folded.
FTS_CONFIG = FTS(
    base_tokenizer="simple",
    language="English",
    lower_case=True,
    stem=True,
    remove_stop_words=True,
    ascii_folding=True,
    with_position=False,
)

CHUNK_COLUMNS = ["id", "doc_id", "title", "heading", "url", "groups", "text", "position"]


def sql_literal(value: str) -> str:
    """A SQL string literal: LanceDB filters are SQL, so quotes must be doubled."""
    return "'" + value.replace("'", "''") + "'"


def groups_filter(groups: Sequence[str]) -> str:
    return f"array_has_any(groups, [{', '.join(sql_literal(g) for g in groups)}])"


class LanceStore(KnowledgeStore):
    """Knowledge store in a LanceDB folder: tables `chunks`, `documents`, `users`, `user_facts`,
    `meta` (the kb version) and `meta_text` (what `set_meta` remembers)."""

    def __init__(
        self, db: lancedb.AsyncConnection, tables: dict[str, AsyncTable], dim: int, vector_index_min_rows: int
    ) -> None:
        self._db = db
        self._t = tables
        self.dim = dim
        self._vector_index_min_rows = vector_index_min_rows
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, *, dim: int, vector_index_min_rows: int = 20_000) -> LanceStore:
        """Open (creating if needed) the store at `path`.

        Other processes (a `deskmate ingest` next to a running `deskmate serve`) write the same
        folder, so reads re-check the latest version every few seconds.
        """
        Path(path).mkdir(parents=True, exist_ok=True)
        db = await lancedb.connect_async(str(path), read_consistency_interval=timedelta(seconds=2))
        vec = pa.list_(pa.float32(), dim)
        schemas = {
            "chunks": pa.schema(
                [
                    ("id", pa.string()),
                    ("doc_id", pa.string()),
                    ("title", pa.string()),
                    ("heading", pa.string()),
                    ("url", pa.string()),
                    ("groups", pa.list_(pa.string())),
                    ("text", pa.string()),
                    ("search_text", pa.string()),
                    ("position", pa.int32()),
                    ("vector", vec),
                ]
            ),
            "documents": pa.schema(
                [
                    ("doc_id", pa.string()),
                    ("title", pa.string()),
                    ("url", pa.string()),
                    ("groups", pa.list_(pa.string())),
                    ("content_hash", pa.string()),
                    ("source", pa.string()),
                    ("chunk_count", pa.int32()),
                    ("ingested_at", pa.string()),
                ]
            ),
            "users": pa.schema([("key", pa.string()), ("profile", pa.string())]),
            "user_facts": pa.schema(
                [
                    ("id", pa.string()),
                    ("user_key", pa.string()),
                    ("text", pa.string()),
                    ("vector", vec),
                ]
            ),
            "meta": pa.schema([("key", pa.string()), ("value", pa.int64())]),
            # Text values get a table of their own: stores made before them keep `meta` as is.
            "meta_text": pa.schema([("key", pa.string()), ("value", pa.string())]),
        }
        tables = {name: await db.create_table(name, schema=schema, exist_ok=True) for name, schema in schemas.items()}
        existing = (await tables["chunks"].schema()).field("vector").type
        if existing.list_size != dim:
            raise ValueError(
                f"the store at {path} holds {existing.list_size}-d vectors but the embedding model "
                f"makes {dim}-d ones: re-ingest into a new store (or delete {path})"
            )
        store = cls(db, tables, dim, vector_index_min_rows)
        await store._ensure_scalar_indexes()
        return store

    async def _ensure_scalar_indexes(self) -> None:
        chunks = self._t["chunks"]
        names = {ix.name for ix in await chunks.list_indices()}
        if "search_text_idx" not in names:
            await chunks.create_index("search_text", config=FTS_CONFIG, replace=True)
        if "groups_idx" not in names:
            await chunks.create_index("groups", config=LabelList(), replace=True)
        if "doc_id_idx" not in names:
            await chunks.create_index("doc_id", config=BTree(), replace=True)
        facts = self._t["user_facts"]
        if "user_key_idx" not in {ix.name for ix in await facts.list_indices()}:
            await facts.create_index("user_key", config=BTree(), replace=True)

    # --- documents ---------------------------------------------------------------------------
    async def replace_documents(self, writes: Sequence[DocumentWrite]) -> None:
        if not writes:
            return
        rows: list[dict[str, Any]] = []
        for write in writes:
            for chunk, vector in write.pairs():
                row = chunk.to_dict()
                row["search_text"] = chunk.search_text
                row["vector"] = np.asarray(vector, dtype=np.float32)
                rows.append(row)
        doc_ids = [w.record.doc_id for w in writes]
        scope = f"doc_id IN ({', '.join(sql_literal(d) for d in doc_ids)})"
        async with self._write_lock:
            # One commit for the batch: every document in it is either all old or all new.
            await (
                self._t["chunks"]
                .merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(scope)
                .execute(pa.Table.from_pylist(rows, schema=await self._t["chunks"].schema()))
                if rows
                else self._t["chunks"].delete(scope)
            )
            records = [{**w.record.__dict__, "groups": list(w.record.groups)} for w in writes]
            await (
                self._t["documents"]
                .merge_insert("doc_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(pa.Table.from_pylist(records, schema=await self._t["documents"].schema()))
            )

    async def delete_documents(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        scope = f"doc_id IN ({', '.join(sql_literal(d) for d in doc_ids)})"
        async with self._write_lock:
            existing = await self._t["documents"].count_rows(scope)
            await self._t["chunks"].delete(scope)
            await self._t["documents"].delete(scope)
        return existing

    async def documents(self) -> dict[str, DocumentRecord]:
        rows = await self._t["documents"].query().to_list()
        return {r["doc_id"]: DocumentRecord(**{**r, "groups": tuple(r["groups"] or ())}) for r in rows}

    async def chunks_of(self, doc_id: str) -> list[Chunk]:
        rows = await self._t["chunks"].query().where(f"doc_id = {sql_literal(doc_id)}").select(CHUNK_COLUMNS).to_list()
        return sorted((Chunk.from_dict(r) for r in rows), key=lambda c: c.position)

    # --- search ------------------------------------------------------------------------------
    async def dense(self, vector: np.ndarray, k: int, groups: Sequence[str]) -> list[Hit]:
        rows = await (
            self._t["chunks"]
            .query()
            .nearest_to(np.asarray(vector, dtype=np.float32))
            .distance_type("cosine")
            .where(groups_filter(groups))
            .select([*CHUNK_COLUMNS, "_distance"])
            .limit(k)
            .to_list()
        )
        return [Hit(Chunk.from_dict(r), 1.0 - float(r["_distance"])) for r in rows]

    async def lexical(self, text: str, k: int, groups: Sequence[str]) -> list[Hit]:
        if not text.strip():
            return []
        rows = await (
            self._t["chunks"]
            .query()
            .nearest_to_text(text, columns="search_text")
            .where(groups_filter(groups))
            .select([*CHUNK_COLUMNS, "_score"])
            .limit(k)
            .to_list()
        )
        return [Hit(Chunk.from_dict(r), float(r["_score"])) for r in rows]

    # --- users -------------------------------------------------------------------------------
    async def put_user(self, profile: UserProfile, facts: Sequence[str], vectors: np.ndarray) -> None:
        key = sql_literal(profile.key)
        rows = [
            {
                "id": f"{profile.key}#{i}",
                "user_key": profile.key,
                "text": text,
                "vector": np.asarray(vec, dtype=np.float32),
            }
            for i, (text, vec) in enumerate(zip(facts, vectors, strict=True))
        ]
        async with self._write_lock:
            await (
                self._t["users"]
                .merge_insert("key")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute([{"key": profile.key, "profile": profile.to_json()}])
            )
            if rows:
                await (
                    self._t["user_facts"]
                    .merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(f"user_key = {key}")
                    .execute(pa.Table.from_pylist(rows, schema=await self._t["user_facts"].schema()))
                )
            else:
                await self._t["user_facts"].delete(f"user_key = {key}")

    async def get_user(self, key: str) -> UserProfile | None:
        rows = await self._t["users"].query().where(f"key = {sql_literal(key)}").limit(1).to_list()
        return UserProfile.from_json(rows[0]["profile"]) if rows else None

    async def users(self) -> list[UserProfile]:
        rows = await self._t["users"].query().select(["profile"]).to_list()
        return sorted((UserProfile.from_json(r["profile"]) for r in rows), key=lambda p: p.key)

    async def user_facts(self, key: str, vector: np.ndarray, k: int) -> list[str]:
        rows = await (
            self._t["user_facts"]
            .query()
            .nearest_to(np.asarray(vector, dtype=np.float32))
            .distance_type("cosine")
            .where(f"user_key = {sql_literal(key)}")
            .select(["text", "user_key", "_distance"])
            .limit(k)
            .to_list()
        )
        return [r["text"] for r in rows if r["user_key"] == key]

    async def delete_user(self, key: str) -> int:
        scope = f"user_key = {sql_literal(key)}"
        async with self._write_lock:
            removed = await self._t["user_facts"].count_rows(scope)
            removed += await self._t["users"].count_rows(f"key = {sql_literal(key)}")
            await self._t["user_facts"].delete(scope)
            await self._t["users"].delete(f"key = {sql_literal(key)}")
        return removed

    # --- housekeeping ------------------------------------------------------------------------
    async def kb_version(self) -> int:
        rows = await self._t["meta"].query().where("key = 'kb_version'").limit(1).to_list()
        return int(rows[0]["value"]) if rows else 0

    async def bump_kb_version(self) -> int:
        async with self._write_lock:
            version = await self.kb_version() + 1
            await (
                self._t["meta"]
                .merge_insert("key")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute([{"key": "kb_version", "value": version}])
            )
        return version

    async def meta(self, key: str) -> str | None:
        rows = await self._t["meta_text"].query().where(f"key = {sql_literal(key)}").limit(1).to_list()
        return str(rows[0]["value"]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write_lock:
            await (
                self._t["meta_text"]
                .merge_insert("key")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute([{"key": key, "value": value}])
            )

    async def stats(self) -> StoreStats:
        groups = await self._t["chunks"].query().select(["groups"]).to_list()
        by_group = Counter(g for row in groups for g in row["groups"])
        return StoreStats(
            documents=await self._t["documents"].count_rows(),
            chunks=len(groups),
            users=await self._t["users"].count_rows(),
            kb_version=await self.kb_version(),
            chunks_by_group=dict(sorted(by_group.items())),
        )

    async def optimize(self) -> None:
        """Compact, fold new rows into the indexes, drop old versions; build the vector index
        once the table is big enough for brute force to be slower than an index."""
        chunks = self._t["chunks"]
        async with self._write_lock:
            rows = await chunks.count_rows()
            names = {ix.name for ix in await chunks.list_indices()}
            if rows >= self._vector_index_min_rows and "vector_idx" not in names:
                await chunks.create_index("vector", config=IvfHnswSq(distance_type="cosine"), replace=True)
            for table in self._t.values():
                await table.optimize(cleanup_older_than=timedelta(minutes=5))

    async def index_info(self) -> list[str]:
        return [f"{ix.name}:{ix.index_type}" for ix in await self._t["chunks"].list_indices()]

    async def close(self) -> None:
        for table in self._t.values():
            table.close()  # type: ignore[no-untyped-call]  # lancedb leaves close() unannotated
        self._db.close()  # type: ignore[no-untyped-call]  # lancedb leaves close() unannotated
