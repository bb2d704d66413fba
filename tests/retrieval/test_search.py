"""Searching the example handbook as different readers, and queries that are not questions."""

from __future__ import annotations

import pytest

from retrieval.cache import MemoryCache
from retrieval.embeddings import Embedder
from retrieval.search import QueryError, Searcher
from retrieval.store import KnowledgeStore


async def test_the_vpn_question_finds_the_vpn_page_first(example_store: KnowledgeStore, embedder: Embedder) -> None:
    result = await Searcher(example_store, embedder).search("how do I reset my VPN password")
    assert result.hits[0].chunk.doc_id == "it/vpn-password-reset.md"
    assert result.hits[0].chunk.url == "https://intranet.northwind.example/help/vpn-password-reset"
    assert result.confident


async def test_user_context_comes_with_the_search(example_store: KnowledgeStore, embedder: Embedder) -> None:
    result = await Searcher(example_store, embedder).search(
        "my laptop is broken, which model do I have?", user_key="miguel.santos@northwind.example"
    )
    assert any("Dell Latitude 7440" in fact for fact in result.user_facts)
    assert all("Miguel" in fact for fact in result.user_facts)


async def test_empty_query_is_a_clear_error(example_store: KnowledgeStore, embedder: Embedder) -> None:
    searcher = Searcher(example_store, embedder)
    for query in ("", "   \n\t"):
        with pytest.raises(QueryError, match="the question is empty"):
            await searcher.search(query)


async def test_a_20000_character_query_is_cut_and_still_searched(
    example_store: KnowledgeStore, embedder: Embedder
) -> None:
    searcher = Searcher(example_store, embedder, MemoryCache(), max_query_chars=2000)
    query = "printer not working in the Lisbon office " * 500
    assert len(query) >= 20_000
    result = await searcher.search(query)
    assert result.truncated and len(result.query) == 2000
    assert result.hits and result.hits[0].chunk.doc_id == "it/printer-setup.md"
