"""The knowledge-store contract, run against every backend this machine can start."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.backends import open_store
from retrieval.chunking import ChunkingConfig, Document
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.records import UserProfile, reader_groups
from retrieval.search import Searcher
from retrieval.store import KnowledgeStore
from retrieval.users import import_users

DOCS = [
    Document(
        "vpn.md",
        "Resetting your VPN password",
        "# Resetting your VPN password\n## Self-service\nOpen the Northwind ID portal, choose "
        "Reset VPN password and confirm with your authenticator app.\n## Locked out\nCall the "
        "service desk on extension 4400 after five failed attempts.",
    ),
    Document(
        "printers.md",
        "Printer setup",
        "# Printer setup\n## Lisbon office\nAdd the printer named LIS-PRINT-02 from the print "
        "portal; badge in at the device to release your job.",
    ),
    Document(
        "wifi.md",
        "Office Wi-Fi",
        "# Office Wi-Fi\nEmployees join NW-Staff with their Northwind ID; guests use NW-Guest "
        "with the daily code from reception.",
    ),
    Document(
        "salary.md",
        "Salary bands",
        groups=("hr",),
        text="# Salary bands\nBand L4 spans 61,000 to 74,000 euros. The compensation review "
        "closes on 15 March; the salary band table is confidential.",
    ),
    Document(
        "mfa-admin.md",
        "Admin runbook: resetting another user's MFA",
        groups=("it-admin",),
        text="# Admin runbook\nOpen the identity console, search the user, revoke all "
        "authenticator factors and issue a temporary access pass valid for one hour.",
    ),
]

EXACT_PHRASES = {
    "vpn.md": "choose Reset VPN password and confirm with your authenticator app",
    "printers.md": "Add the printer named LIS-PRINT-02 from the print portal",
    "wifi.md": "guests use NW-Guest with the daily code from reception",
}


@pytest.fixture
async def loaded(store: KnowledgeStore, embedder: Embedder) -> KnowledgeStore:
    ingestor = Ingestor(store, embedder, chunking=ChunkingConfig(300, 40))
    report = await ingestor.ingest_documents(DOCS, finish=True)
    assert report.ok and len(report.added) == len(DOCS)
    return store


async def test_exact_phrase_finds_its_chunk_first(loaded: KnowledgeStore, embedder: Embedder) -> None:
    searcher = Searcher(loaded, embedder)
    for doc_id, phrase in EXACT_PHRASES.items():
        for mode in ("hybrid", "lexical", "dense"):
            result = await searcher.search(phrase, k=3, mode=mode)
            assert result.hits, (mode, phrase)
            assert result.hits[0].chunk.doc_id == doc_id, (mode, phrase, result.hits[0].chunk)
            assert phrase in result.hits[0].chunk.text


@pytest.mark.parametrize("mode", ["hybrid", "lexical", "dense"])
async def test_group_filter_is_strict(loaded: KnowledgeStore, embedder: Embedder, mode: str) -> None:
    """Whatever the query, a reader outside HR never receives an HR-only chunk."""
    searcher = Searcher(loaded, embedder)
    hostile = [
        "Band L4 spans 61,000 to 74,000 euros",
        "salary band table confidential compensation review",
        "revoke all authenticator factors and issue a temporary access pass",
        "hr",
        "everyone",
        "groups",
        "'; DROP TABLE chunks; --",
    ]
    for query in hostile:
        for groups in ([], ["finance"], ["it-admin"]):
            result = await searcher.search(query, groups=groups, k=50, mode=mode)
            seen = {g for h in result.hits for g in h.chunk.groups}
            assert "hr" not in seen, (query, groups, mode)
            allowed = set(reader_groups(groups))
            assert all(set(h.chunk.groups) & allowed for h in result.hits)
    hr = await searcher.search("Band L4 salary range", groups=["hr"], k=3, mode=mode)
    assert hr.hits[0].chunk.doc_id == "salary.md"


async def test_user_context_never_crosses_users(store: KnowledgeStore, embedder: Embedder) -> None:
    ana = UserProfile(
        key="ana@northwind.example",
        name="Ana Costa",
        department="Finance",
        location="Lisbon",
        devices=("Dell Latitude 7440",),
    )
    ben = UserProfile(
        key="ben@northwind.example",
        name="Ben Weber",
        department="Engineering",
        location="Berlin",
        devices=("ThinkPad X1 Carbon",),
    )
    await import_users([ana, ben], store, embedder)
    question = await embedder.embed_query("my Dell Latitude laptop in Lisbon finance")
    ben_facts = await store.user_facts(ben.key, question, k=20)
    assert ben_facts and all("Ana" not in f and "Dell" not in f and "Lisbon" not in f for f in ben_facts)
    ana_facts = await store.user_facts(ana.key, question, k=2)
    assert any("Dell Latitude 7440" in f for f in ana_facts)
    assert await store.user_facts("nobody@northwind.example", question, k=5) == []
    assert (await store.get_user(ben.key)).location == "Berlin"
    assert [p.key for p in await store.users()] == [ana.key, ben.key]
    removed = await store.delete_user(ana.key)
    assert removed >= 2
    assert await store.get_user(ana.key) is None
    assert await store.user_facts(ana.key, question, k=5) == []


async def test_upsert_is_idempotent(loaded: KnowledgeStore, embedder: Embedder) -> None:
    before = await loaded.stats()
    chunks = await loaded.chunks_of("vpn.md")
    vectors = embedder.embed([c.search_text for c in chunks])
    record = (await loaded.documents())["vpn.md"]
    from retrieval.records import DocumentWrite

    for _ in range(2):
        await loaded.replace_documents([DocumentWrite(record, chunks, vectors)])
    after = await loaded.stats()
    assert (after.documents, after.chunks) == (before.documents, before.chunks)
    assert await loaded.chunks_of("vpn.md") == chunks


async def test_failed_write_leaves_document_as_it_was(loaded: KnowledgeStore, embedder: Embedder) -> None:
    from retrieval.records import DocumentWrite

    old = await loaded.chunks_of("wifi.md")
    record = (await loaded.documents())["wifi.md"]
    bad_vectors = np.ones((len(old), embedder.dim + 3), dtype=np.float32)  # wrong dimension
    with pytest.raises(Exception):  # noqa: B017 (backends raise their own error types)
        await loaded.replace_documents([DocumentWrite(record, old[:1], bad_vectors[:1])])
    assert await loaded.chunks_of("wifi.md") == old


async def test_delete_removes_everything_of_a_document(loaded: KnowledgeStore, embedder: Embedder) -> None:
    assert await loaded.delete_documents(["printers.md"]) == 1
    assert await loaded.chunks_of("printers.md") == []
    assert "printers.md" not in await loaded.documents()
    searcher = Searcher(loaded, embedder)
    for mode in ("hybrid", "lexical", "dense"):
        result = await searcher.search(EXACT_PHRASES["printers.md"], k=50, mode=mode)
        assert all(h.chunk.doc_id != "printers.md" for h in result.hits)
    assert await loaded.delete_documents(["printers.md"]) == 0


async def test_kb_version_grows_with_changes(loaded: KnowledgeStore, embedder: Embedder) -> None:
    ingestor = Ingestor(loaded, embedder, chunking=ChunkingConfig(300, 40))
    v1 = await loaded.kb_version()
    unchanged = await ingestor.ingest_documents(DOCS, finish=True)
    assert unchanged.chunks_embedded == 0 and await loaded.kb_version() == v1
    changed = Document("wifi.md", "Office Wi-Fi", "# Office Wi-Fi\nThe staff network is now NW-Secure.")
    report = await ingestor.ingest_documents([changed], finish=True)
    assert report.updated == ["wifi.md"] and report.kb_version == v1 + 1
    texts = " ".join(c.text for c in await loaded.chunks_of("wifi.md"))
    assert "NW-Secure" in texts and "NW-Guest" not in texts


async def test_meta_values_are_remembered_and_replaced(store: KnowledgeStore) -> None:
    """What ingest remembers (the knowledge folder) reads back exactly, and a new value
    replaces the old one without touching the kb version."""
    assert await store.meta("kb_root") is None
    version = await store.kb_version()
    folder = "/srv/knowledge base/it's ours/日本"
    await store.set_meta("kb_root", folder)
    assert await store.meta("kb_root") == folder
    await store.set_meta("kb_root", "/srv/kb")
    await store.set_meta("other", "x")
    assert (await store.meta("kb_root"), await store.meta("other")) == ("/srv/kb", "x")
    assert await store.kb_version() == version


async def test_a_store_that_comes_up_after_start_is_used_once_it_answers(
    example_store_url: str, embedder: Embedder
) -> None:
    """A server process started before Weaviate: calls fail clearly (never hang) until the
    store answers, then go through, without a restart."""
    import asyncio

    from retrieval.store import DeferredStore, StoreUnavailable
    from tests.support.services import free_port

    where = [f"http://127.0.0.1:{free_port()}"]  # nothing listens there yet

    async def connect() -> KnowledgeStore:
        return await open_store(where[0], dim=embedder.dim, grpc_port=free_port())

    store = DeferredStore(connect, dim=embedder.dim, retry_after=0.1)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get_user("lukas.becker@northwind.example")
        for _ in range(100):  # the background attempt fails with the server's reason
            if "Weaviate" in str(await _reason(store)):
                break
            await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable, match="Weaviate"):  # a readiness probe shows why
            await store.ping()
        where[0] = example_store_url  # the store is up now
        for _ in range(100):
            if not await _reason(store):
                break
            await asyncio.sleep(0.1)
        assert await store.ping()
        profile = await store.get_user("lukas.becker@northwind.example")
        assert profile is not None and profile.name == "Lukas Becker"
    finally:
        await store.close()


async def _reason(store: object) -> str:
    from retrieval.store import StoreUnavailable

    try:
        await store.kb_version()  # type: ignore[attr-defined]
    except StoreUnavailable as exc:
        return str(exc)
    return ""
