"""The server knowledge store: Weaviate, for deployments that outgrow one machine's disk.

Why it is shaped this way:

- Chunks carry their access groups as a filterable `text[]` property, so the group filter runs
  inside Weaviate's vector and BM25 search rather than after it; results are then re-checked
  here, so an ACL mistake on either side alone cannot leak a chunk.
- Hybrid search uses Weaviate's own relative-score fusion, the same fusion `retrieval.fusion`
  applies for the embedded backend, so the two backends rank alike and share a confidence scale.
- BM25 indexes only `search_text` (title, heading path and text): the other text properties are
  stored for citing, not searched, which keeps the inverted index small and scores comparable
  with the embedded store's single full-text column.
- User context lives in a multi-tenant collection with one tenant per user. A tenant is a
  separate shard, so one user's facts cannot appear in another user's search even if a filter
  were wrong, and deleting a user is dropping their tenant.
- Object ids are UUIDv5 of our own ids, so every write is an idempotent upsert.

Weaviate has no multi-object transactions: a document is written chunks first, then stale chunks
are removed, then its record. If a write fails midway the record still holds the old content
hash, so the next ingest rewrites the document.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import numpy as np
import weaviate
from weaviate.auth import Auth
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    Tokenization,
    VectorDistances,
)
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, FilterReturn, HybridFusion, MetadataQuery, Sort
from weaviate.collections import CollectionAsync
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError
from weaviate.outputs.query import Object
from weaviate.util import generate_uuid5

from retrieval.fusion import relative_score_fusion
from retrieval.records import (
    Chunk,
    DocumentRecord,
    DocumentWrite,
    Hit,
    RankedHits,
    StoreStats,
    UserProfile,
)
from retrieval.store import KnowledgeStore, StoreUnavailable

log = logging.getLogger(__name__)

#: The one named vector of each vector-bearing collection (the client's own default name).
VECTOR = "default"
CHUNK_PROPERTIES = ["chunk_id", "doc_id", "title", "heading", "url", "groups", "text", "position"]
DOCUMENT_PROPERTIES = [
    "doc_id",
    "title",
    "url",
    "groups",
    "content_hash",
    "source",
    "chunk_count",
    "ingested_at",
]
#: Objects per insert_many call: one gRPC message each, well under the server's size limit.
INSERT_BATCH = 200
#: Objects per page when reading a document's chunks or iterating a collection.
PAGE = 1000
#: Values per `contains_any` filter when deleting or counting many documents.
FILTER_VALUES = 100
DEFAULT_GRPC_PORT = {"http": 50051, "https": 443}
DEFAULT_HTTP_PORT = {"http": 8080, "https": 443}
KB_VERSION_ID = generate_uuid5("kb_version")
#: Seconds a server may take to answer the connection checks. The client bounds each check,
#: but with an API key its first request waits the full 30 s query timeout.
CONNECT_TIMEOUT = 10

#: Properties of our objects as written and read. The client types each value as the union of
#: every Weaviate field kind; our collections' schemas fix each property's kind instead.
Props = Mapping[str, Any]
#: One of our collections (none uses cross-references).
Collection = CollectionAsync[Props, None]


def tenant_name(user_key: str) -> str:
    """The tenant holding a user's context: tenant names allow only [A-Za-z0-9_-], user keys
    are e-mail addresses and the like, so the key is hashed."""
    return "u" + hashlib.sha1(user_key.encode()).hexdigest()


def meta_id(key: str) -> str:
    """The `Meta` object holding one `set_meta` value (apart from the kb version's object)."""
    return generate_uuid5(f"meta:{key}")


def grpc_host_for(host: str, secure: bool) -> str:
    """Weaviate Cloud serves gRPC on a sibling host (as the client's own cloud helper derives
    it); every other deployment serves it on the HTTP host."""
    if secure and host.endswith(".weaviate.network"):
        ident, domain = host.split(".", 1)
        return f"{ident}.grpc.{domain}"
    if secure and host.endswith(".weaviate.cloud") and not host.startswith("grpc-"):
        return f"grpc-{host}"
    return host


def describe(exc: BaseException) -> str:
    """One line naming what failed and, when the client's wrapper says little, the root cause
    (e.g. "connection refused") it wrapped."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(nxt)
    text = " ".join((str(exc) or type(exc).__name__).split())
    root = chain[-1]
    if root is not exc and str(root) and str(root) not in text:
        text += f" ({type(root).__name__}: {' '.join(str(root).split())})"
    return text


def text_property(
    name: str, *, filterable: bool = False, searchable: bool = False, field: bool = False, array: bool = False
) -> Property:
    return Property(
        name=name,
        data_type=DataType.TEXT_ARRAY if array else DataType.TEXT,
        tokenization=Tokenization.FIELD if field else Tokenization.WORD,
        index_filterable=filterable,
        index_searchable=searchable,
    )


def chunk_from(properties: Props) -> Chunk:
    """A chunk object's properties as the record (Weaviate names its id `chunk_id`)."""
    return Chunk.from_dict({**properties, "id": properties["chunk_id"], "text": properties.get("text") or ""})


def as_vector(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).reshape(-1).tolist()


def sliced(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class WeaviateStore(KnowledgeStore):
    """Knowledge store in a Weaviate server: collections `Chunk`, `Document`, `UserContext`
    (one tenant per user) and `Meta`, each name optionally prefixed."""

    def __init__(
        self, client: weaviate.WeaviateAsyncClient, names: dict[str, str], dim: int, server_version: tuple[int, int]
    ) -> None:
        self._client = client
        self._names = names
        self.dim = dim
        self._chunks: Collection = client.collections.use(names["chunk"])
        self._documents: Collection = client.collections.use(names["document"])
        self._users: Collection = client.collections.use(names["user"])
        self._meta: Collection = client.collections.use(names["meta"])
        # Weaviate evaluates ContainsNone from 1.33 on; older servers get a fetch-then-delete.
        self._contains_none = server_version >= (1, 33)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        dim: int,
        api_key: str | None = None,
        grpc_port: int | None = None,
        prefix: str = "",
    ) -> WeaviateStore:
        """Connect to the Weaviate at `url` and create the collections it lacks.

        One URL is enough for local, self-hosted and Weaviate Cloud servers: the gRPC endpoint
        the client also needs is derived from it (port 50051 for http, 443 for https) unless
        `grpc_port` says otherwise. Without a port the URL means Weaviate's usual 8080 for http
        and 443 for https. `prefix` keeps the collections of a test run apart from everyone
        else's on a shared server.
        """
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"a Weaviate URL looks like http://host:8080 or https://host, not {url!r}")
        if not re.fullmatch(r"([A-Za-z][A-Za-z0-9_]*)?", prefix):
            raise ValueError(f"collection prefix {prefix!r} must be a letter, then letters, digits or _")
        secure = parsed.scheme == "https"
        host = parsed.hostname
        http_port = parsed.port or DEFAULT_HTTP_PORT[parsed.scheme]
        g_host = grpc_host_for(host, secure)
        g_port = grpc_port or DEFAULT_GRPC_PORT[parsed.scheme]
        shown = f"{parsed.scheme}://{parsed.netloc.rsplit('@', 1)[-1]}"

        def unavailable(what: str, exc: BaseException) -> StoreUnavailable:
            reason = describe(exc)
            if api_key:
                reason = reason.replace(api_key, "***")
            return StoreUnavailable(f"{what} Weaviate at {shown} (gRPC {g_host}:{g_port}): {reason}")

        client = weaviate.use_async_with_custom(
            http_host=host,
            http_port=http_port,
            http_secure=secure,
            grpc_host=g_host,
            grpc_port=g_port,
            grpc_secure=secure,
            auth_credentials=Auth.api_key(api_key) if api_key else None,
            skip_init_checks=False,
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.connect()
                meta = await client.get_meta()
        except TimeoutError as exc:
            await client.close()
            raise StoreUnavailable(
                f"cannot connect to Weaviate at {shown} (gRPC {g_host}:{g_port}): no answer within {CONNECT_TIMEOUT} s"
            ) from exc
        except (WeaviateBaseError, OSError) as exc:
            await client.close()
            error = unavailable("cannot connect to", exc)
            raise error from (None if api_key and api_key in str(exc) else exc)

        base = prefix[:1].upper() + prefix[1:]
        names = {
            "chunk": f"{base}Chunk",
            "document": f"{base}Document",
            "user": f"{base}UserContext",
            "meta": f"{base}Meta",
        }
        version = tuple(int(n) for n in re.findall(r"\d+", str(meta.get("version", "0.0")))[:2])
        major, minor = (version + (0, 0))[:2]
        store = cls(client, names, dim, (major, minor))
        try:
            await store._ensure_collections()
            await store._check_dimension()
        except WeaviateBaseError as exc:
            await client.close()
            raise unavailable("cannot set up collections in", exc) from exc
        except Exception:
            await client.close()
            raise
        return store

    async def _ensure_collections(self) -> None:
        vectors_cosine = Configure.Vectors.self_provided(
            name=VECTOR,
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
        )
        no_vectors = Configure.Vectors.self_provided(name=VECTOR, vector_index_config=Configure.VectorIndex.none())
        specs: dict[str, dict[str, Any]] = {
            "chunk": {
                "properties": [
                    text_property("chunk_id", filterable=True, field=True),
                    text_property("doc_id", filterable=True, field=True),
                    text_property("title"),
                    text_property("heading"),
                    text_property("url"),
                    text_property("groups", filterable=True, field=True, array=True),
                    text_property("text"),
                    text_property("search_text", searchable=True),
                    Property(name="position", data_type=DataType.INT, index_filterable=True),
                ],
                "vector_config": vectors_cosine,
            },
            "document": {
                "properties": [
                    text_property("doc_id", filterable=True, field=True),
                    text_property("title"),
                    text_property("url"),
                    text_property("groups", field=True, array=True),
                    text_property("content_hash"),
                    text_property("source"),
                    Property(name="chunk_count", data_type=DataType.INT, index_filterable=False),
                    text_property("ingested_at"),
                ],
                "vector_config": no_vectors,
            },
            "user": {
                "properties": [
                    text_property("user_key", filterable=True, field=True),
                    text_property("kind", filterable=True, field=True),
                    text_property("text"),
                    text_property("profile_json"),
                ],
                # A user has a handful of facts: brute force beats a graph per tenant.
                "vector_config": Configure.Vectors.self_provided(
                    name=VECTOR,
                    vector_index_config=Configure.VectorIndex.flat(distance_metric=VectorDistances.COSINE),
                ),
                "multi_tenancy_config": Configure.multi_tenancy(enabled=True, auto_tenant_creation=True),
            },
            "meta": {
                "properties": [
                    Property(name="kb_version", data_type=DataType.INT, index_filterable=False),
                    text_property("value"),
                ],
                "vector_config": no_vectors,
            },
        }
        for key, spec in specs.items():
            name = self._names[key]
            if await self._client.collections.exists(name):
                if key == "meta":
                    await self._ensure_meta_value()
                continue
            try:
                await self._client.collections.create(name, **spec)
                log.info("weaviate.created collection=%s", name)
            except UnexpectedStatusCodeError:
                # Another process (an ingest next to a server) may have created it meanwhile.
                if not await self._client.collections.exists(name):
                    raise

    async def _ensure_meta_value(self) -> None:
        """A `Meta` collection made before `set_meta` existed lacks its text property; adding
        it is cheap and keeps the kb version object as it is."""
        config = await self._meta.config.get()
        if any(prop.name == "value" for prop in config.properties):
            return
        try:
            await self._meta.config.add_property(text_property("value"))
        except UnexpectedStatusCodeError:
            # Another process may have added it meanwhile.
            config = await self._meta.config.get()
            if not any(prop.name == "value" for prop in config.properties):
                raise

    async def _check_dimension(self) -> None:
        """Vectors of another size would fail every write and search; say so once, up front."""
        sample = await self._chunks.query.fetch_objects(limit=1, include_vector=True, return_properties=["chunk_id"])
        if not sample.objects:
            return
        stored = sample.objects[0].vector.get(VECTOR) if sample.objects[0].vector else None
        if stored is not None and len(stored) != self.dim:
            raise ValueError(
                f"the Weaviate collection {self._names['chunk']} holds {len(stored)}-d vectors but "
                f"the embedding model makes {self.dim}-d ones: re-ingest with another collection "
                "prefix (or delete the collections)"
            )

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    async def _insert(collection: Collection, objects: Sequence[DataObject[Props, None]]) -> None:
        for part in sliced(objects, INSERT_BATCH):
            result = await collection.data.insert_many(part)
            if result.errors:
                first = next(iter(result.errors.values()))
                raise RuntimeError(
                    f"Weaviate rejected {len(result.errors)} of {len(part)} objects in "
                    f"{collection.name}: {first.message}"
                )

    @staticmethod
    async def _delete_where(collection: Collection, where: FilterReturn) -> int:
        """Deletes everything matching; one call removes at most the server's
        QUERY_MAXIMUM_RESULTS objects, so repeat until nothing matches."""
        removed = 0
        while True:
            result = await collection.data.delete_many(where=where)
            if result.failed:
                raise RuntimeError(f"Weaviate failed to delete {result.failed} objects in {collection.name}")
            removed += result.successful
            if result.matches == 0 or result.successful == 0:
                return removed

    async def _doc_chunk_objects(self, doc_id: str, properties: list[str]) -> list[Object[Props, None]]:
        """All of a document's chunk objects in position order. Weaviate's cursor cannot be
        combined with a filter and offsets stop at QUERY_MAXIMUM_RESULTS, so pages are keyed
        on position, with an offset only to step over chunks sharing one."""
        of_doc = Filter.by_property("doc_id").equal(doc_id)
        order = Sort.by_property("position").by_property("chunk_id")
        found: list[Object[Props, None]] = []
        low: int | None = None
        skip = 0
        while True:
            where = of_doc
            if low is not None:
                where = of_doc & Filter.by_property("position").greater_or_equal(low)
            page = await self._chunks.query.fetch_objects(
                filters=where,
                sort=order,
                offset=skip or None,
                limit=PAGE,
                return_properties=list({*properties, "position"}),
            )
            found.extend(page.objects)
            if len(page.objects) < PAGE:
                return found
            last = int(page.objects[-1].properties["position"])
            if last == low:
                skip += len(page.objects)
            else:
                low = last
                skip = sum(1 for o in page.objects if int(o.properties["position"]) == last)

    @staticmethod
    def _visible(hits: list[Hit], groups: Sequence[str]) -> list[Hit]:
        allowed = set(groups)
        return [h for h in hits if allowed.intersection(h.chunk.groups)]

    @staticmethod
    def _groups_filter(groups: Sequence[str]) -> FilterReturn:
        return Filter.by_property("groups").contains_any(list(groups))

    # --- documents ---------------------------------------------------------------------------
    async def replace_documents(self, writes: Sequence[DocumentWrite]) -> None:
        """Upsert the new chunks before deleting stale ones, and the record last: readers never
        see a document without chunks, and an interrupted write keeps the old content hash, so
        the next ingest redoes it."""
        if not writes:
            return
        objects: list[DataObject[Props, None]] = []
        for write in writes:
            for chunk, vector in write.pairs():
                values = as_vector(vector)
                if len(values) != self.dim:
                    raise ValueError(f"{chunk.id}: {len(values)}-d vector, the store holds {self.dim}-d")
                properties = chunk.to_dict()
                properties["chunk_id"] = properties.pop("id")
                properties["search_text"] = chunk.search_text
                objects.append(
                    DataObject(properties=properties, uuid=generate_uuid5(chunk.id), vector={VECTOR: values})
                )
        records = [
            DataObject(
                properties={**asdict(w.record), "groups": list(w.record.groups)},
                uuid=generate_uuid5(w.record.doc_id),
            )
            for w in writes
        ]
        async with self._write_lock:
            await self._insert(self._chunks, objects)
            for write in writes:
                await self._delete_stale_chunks(write.record.doc_id, [c.id for c in write.chunks])
            await self._insert(self._documents, records)

    async def _delete_stale_chunks(self, doc_id: str, keep: list[str]) -> None:
        of_doc = Filter.by_property("doc_id").equal(doc_id)
        if not keep:
            await self._delete_where(self._chunks, of_doc)
            return
        if self._contains_none:
            await self._delete_where(self._chunks, of_doc & Filter.by_property("chunk_id").contains_none(keep))
            return
        kept = set(keep)
        stale = [
            o.uuid for o in await self._doc_chunk_objects(doc_id, ["chunk_id"]) if o.properties["chunk_id"] not in kept
        ]
        for part in sliced(stale, PAGE):
            await self._delete_where(self._chunks, Filter.by_id().contains_any(list(part)))

    async def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Chunks go first so a failure leaves a record behind, and a later prune retries."""
        if not doc_ids:
            return 0
        existing = 0
        async with self._write_lock:
            for part in sliced(list(dict.fromkeys(doc_ids)), FILTER_VALUES):
                where = Filter.by_property("doc_id").contains_any(list(part))
                counted = await self._documents.aggregate.over_all(filters=where, total_count=True)
                existing += counted.total_count or 0
                await self._delete_where(self._chunks, where)
                await self._delete_where(self._documents, where)
        return existing

    async def documents(self) -> dict[str, DocumentRecord]:
        """Every record, via the cursor, so the count of documents is not capped by the
        server's query limit."""
        records: dict[str, DocumentRecord] = {}
        async for obj in self._documents.iterator(return_properties=DOCUMENT_PROPERTIES, cache_size=PAGE):
            p = obj.properties
            records[p["doc_id"]] = DocumentRecord(
                doc_id=p["doc_id"],
                title=p.get("title") or "",
                url=p.get("url") or "",
                groups=tuple(p.get("groups") or ()),
                content_hash=p.get("content_hash") or "",
                source=p.get("source") or "",
                chunk_count=int(p.get("chunk_count") or 0),
                ingested_at=p.get("ingested_at") or "",
            )
        return records

    async def chunks_of(self, doc_id: str) -> list[Chunk]:
        """Reading order comes from `position`, which the server sorts on while paging."""
        objects = await self._doc_chunk_objects(doc_id, CHUNK_PROPERTIES)
        return sorted((chunk_from(o.properties) for o in objects), key=lambda c: c.position)

    # --- search ------------------------------------------------------------------------------
    async def dense(self, vector: np.ndarray, k: int, groups: Sequence[str]) -> list[Hit]:
        """Cosine distance from Weaviate turned into similarity, the scale the embedded store
        and the confidence threshold use."""
        if not groups or k <= 0:
            return []
        result = await self._chunks.query.near_vector(
            as_vector(vector),
            limit=k,
            filters=self._groups_filter(groups),
            target_vector=VECTOR,
            return_metadata=MetadataQuery(distance=True),
            return_properties=CHUNK_PROPERTIES,
        )
        hits = [Hit(chunk_from(o.properties), 1.0 - float(o.metadata.distance or 0.0)) for o in result.objects]
        return self._visible(hits, groups)

    async def lexical(self, text: str, k: int, groups: Sequence[str]) -> list[Hit]:
        """BM25 over `search_text` only, the same text the embedded store indexes."""
        if not text.strip() or not groups or k <= 0:
            return []
        result = await self._chunks.query.bm25(
            text,
            query_properties=["search_text"],
            limit=k,
            filters=self._groups_filter(groups),
            return_metadata=MetadataQuery(score=True),
            return_properties=CHUNK_PROPERTIES,
        )
        hits = [Hit(chunk_from(o.properties), float(o.metadata.score or 0.0)) for o in result.objects]
        return self._visible(hits, groups)

    async def hybrid(
        self,
        text: str,
        vector: np.ndarray,
        k: int,
        groups: Sequence[str],
        alpha: float,
        candidates: int | None = None,
    ) -> RankedHits:
        """Fused server-side in one round trip (relative-score fusion, as the embedded store
        does locally); a one-result vector query alongside gives the raw similarity that the
        fused scores no longer carry. Weaviate sizes its own candidate pools, so `candidates`
        is not needed here."""
        if not groups or k <= 0:
            return RankedHits(hits=[], top_similarity=0.0)
        if not text.strip():
            dense = await self.dense(vector, k, groups)
            fused = relative_score_fusion(dense, [], alpha)
            return RankedHits(hits=fused[:k], top_similarity=dense[0].score if dense else 0.0)
        values = as_vector(vector)
        fused_result, top = await asyncio.gather(
            self._chunks.query.hybrid(
                text,
                alpha=alpha,
                vector=values,
                query_properties=["search_text"],
                fusion_type=HybridFusion.RELATIVE_SCORE,
                limit=k,
                filters=self._groups_filter(groups),
                target_vector=VECTOR,
                return_metadata=MetadataQuery(score=True),
                return_properties=CHUNK_PROPERTIES,
            ),
            self.dense(vector, 1, groups),
        )
        hits = [Hit(chunk_from(o.properties), float(o.metadata.score or 0.0)) for o in fused_result.objects]
        return RankedHits(hits=self._visible(hits, groups)[:k], top_similarity=top[0].score if top else 0.0)

    # --- users -------------------------------------------------------------------------------
    def _user_collection(self, key: str) -> Collection:
        return self._users.with_tenant(tenant_name(key))

    async def _tenant_exists(self, key: str) -> bool:
        return bool(await self._users.tenants.exists(tenant_name(key)))

    async def put_user(self, profile: UserProfile, facts: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert then prune, so a reader never finds a user without facts mid-update. The
        profile object carries the first fact's vector so that it is valid even where a
        server insists on vectors in a vector-indexed collection; searches filter it out by
        kind."""
        key = profile.key
        fact_vectors = [as_vector(v) for v in vectors] if len(facts) else []
        objects = [
            DataObject(
                properties={"user_key": key, "kind": "profile", "text": "", "profile_json": profile.to_json()},
                uuid=generate_uuid5("profile", key),
                vector={VECTOR: fact_vectors[0]} if fact_vectors else None,
            )
        ]
        objects += [
            DataObject(
                properties={"user_key": key, "kind": "fact", "text": text, "profile_json": ""},
                uuid=generate_uuid5(f"fact#{i}", key),
                vector={VECTOR: values},
            )
            for i, (text, values) in enumerate(zip(facts, fact_vectors, strict=True))
        ]
        keep = {str(o.uuid) for o in objects}
        collection = self._user_collection(key)
        async with self._write_lock:
            await self._insert(collection, objects)
            stale = [
                o.uuid
                async for o in collection.iterator(return_properties=["kind"], cache_size=PAGE)
                if str(o.uuid) not in keep
            ]
            for part in sliced(stale, PAGE):
                await self._delete_where(collection, Filter.by_id().contains_any(list(part)))

    async def get_user(self, key: str) -> UserProfile | None:
        """A user without a tenant was never imported (or was deleted)."""
        if not await self._tenant_exists(key):
            return None
        obj = await self._user_collection(key).query.fetch_object_by_id(
            generate_uuid5("profile", key), return_properties=["user_key", "profile_json"]
        )
        if obj is None or obj.properties.get("user_key") != key:
            return None
        return UserProfile.from_json(obj.properties["profile_json"])

    async def users(self) -> list[UserProfile]:
        """One profile object per tenant; tenants are read a page at a time."""
        profiles = []
        for name in await self._users.tenants.get():
            found = await self._users.with_tenant(name).query.fetch_objects(
                filters=Filter.by_property("kind").equal("profile"),
                limit=1,
                return_properties=["profile_json"],
            )
            profiles += [UserProfile.from_json(o.properties["profile_json"]) for o in found.objects]
        return sorted(profiles, key=lambda p: p.key)

    async def user_facts(self, key: str, vector: np.ndarray, k: int) -> list[str]:
        """Searched inside the user's own tenant; the key is still filtered and re-checked so
        that even a tenant-name mix-up cannot hand one user another's facts."""
        if k <= 0:
            return []
        try:
            result = await self._user_collection(key).query.near_vector(
                as_vector(vector),
                limit=k,
                filters=Filter.by_property("kind").equal("fact") & Filter.by_property("user_key").equal(key),
                target_vector=VECTOR,
                return_properties=["text", "user_key", "kind"],
            )
        except WeaviateBaseError:
            # The usual cause is a user never imported, whose tenant does not exist; ask only
            # on failure, to keep the extra round trip off every search.
            if not await self._tenant_exists(key):
                return []
            raise
        return [
            o.properties["text"]
            for o in result.objects
            if o.properties.get("user_key") == key and o.properties.get("kind") == "fact"
        ]

    async def delete_user(self, key: str) -> int:
        """Dropping the tenant removes profile and facts at once; they are counted first
        because the count is what the caller reports."""
        async with self._write_lock:
            if not await self._tenant_exists(key):
                return 0
            counted = await self._user_collection(key).aggregate.over_all(total_count=True)
            await self._users.tenants.remove([tenant_name(key)])
        return counted.total_count or 0

    # --- housekeeping ------------------------------------------------------------------------
    async def kb_version(self) -> int:
        obj = await self._meta.query.fetch_object_by_id(KB_VERSION_ID, return_properties=["kb_version"])
        return int(obj.properties.get("kb_version") or 0) if obj is not None else 0

    async def bump_kb_version(self) -> int:
        """Serialised within this process only, as in the embedded store: concurrent ingests
        from two processes could both write the same number, which still invalidates caches."""
        async with self._write_lock:
            version = await self.kb_version() + 1
            await self._insert(
                self._meta,
                [DataObject(properties={"kb_version": version}, uuid=KB_VERSION_ID)],
            )
        return version

    async def meta(self, key: str) -> str | None:
        obj = await self._meta.query.fetch_object_by_id(meta_id(key), return_properties=["value"])
        value = obj.properties.get("value") if obj is not None else None
        return str(value) if value is not None else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write_lock:
            await self._insert(self._meta, [DataObject(properties={"value": value}, uuid=meta_id(key))])

    async def stats(self) -> StoreStats:
        """Counts come from aggregates; per-group counts need every chunk's groups, read with
        the cursor (an admin command, so the full scan is acceptable)."""
        documents, chunks, tenants, version = await asyncio.gather(
            self._documents.aggregate.over_all(total_count=True),
            self._chunks.aggregate.over_all(total_count=True),
            self._users.tenants.get(),
            self.kb_version(),
        )
        by_group: Counter[str] = Counter()
        async for obj in self._chunks.iterator(return_properties=["groups"], cache_size=PAGE):
            by_group.update(obj.properties.get("groups") or ())
        return StoreStats(
            documents=documents.total_count or 0,
            chunks=chunks.total_count or 0,
            users=len(tenants),
            kb_version=version,
            chunks_by_group=dict(sorted(by_group.items())),
        )

    async def ping(self) -> bool:
        """Reads the kb version, which exercises the server, gRPC and our schema at once."""
        try:
            await self.kb_version()
        except WeaviateBaseError as exc:
            raise StoreUnavailable(f"Weaviate does not answer: {exc}") from exc
        return True

    async def close(self) -> None:
        await self._client.close()
