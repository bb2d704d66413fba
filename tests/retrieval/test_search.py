"""Searching the example handbook as different readers, and queries that are not questions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from retrieval.cache import MemoryCache
from retrieval.embeddings import Embedder
from retrieval.search import QueryError, Searcher
from retrieval.store import KnowledgeStore
from retrieval.users import asked_about


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


async def test_the_field_a_question_points_at_joins_the_lexical_query(example_store: KnowledgeStore) -> None:
    lukas = await example_store.get_user("lukas.becker@northwind.example")
    emily = await example_store.get_user("emily.carter@northwind.example")
    assert lukas is not None and emily is not None
    assert asked_about(lukas, "Who leads my department?") == ["Engineering"]
    assert asked_about(emily, "Who leads my department?") == ["Sales"]
    assert "Berlin" in asked_about(lukas, "What's the main phone number of my office?")
    phone = asked_about(emily, "Where do I get the Outlook app for my phone?")
    assert phone and all("MacBook" not in v for v in phone), phone  # the phone, not the laptop
    assert "macOS" in asked_about(emily, "How do I lock my laptop screen?")
    # Another office, or no possessive at all: the asker's own values would mislead the search.
    assert asked_about(lukas, "I'm visiting our other European office. What's the hotel cap there?") == []
    assert asked_about(lukas, "How many leave days does a new hire get?") == []
    # A column the directory adds is pointed at by its own name.
    ledger_owner = replace(lukas, extra={**lukas.extra, "cost_center": "CC-4410", "region": "EMEA"})
    assert asked_about(ledger_owner, "Who approves spending on my cost center?") == ["CC-4410"]
    assert asked_about(ledger_owner, "Which holidays apply in my region?") == ["EMEA"]
    assert asked_about(ledger_owner, "Who approves my costs?") == []


async def test_the_asker_s_values_count_for_confidence_and_are_cached_apart(
    example_store: KnowledgeStore, embedder: Embedder
) -> None:
    searcher = Searcher(example_store, embedder, MemoryCache())
    bare = await searcher.search("Who leads my department?")
    mine = await searcher.search("Who leads my department?", asker=["Engineering"])
    assert not mine.cached  # another asker's (or no asker's) result is not served
    assert mine.confidence > bare.confidence  # "who leads the Engineering department" reads closer
    assert mine.query == bare.query == "Who leads my department?"
    assert "Jonas Richter" in mine.hits[0].chunk.text  # the department table
    again = await searcher.search("Who leads my department?", asker=["Engineering"])
    assert again.cached and again.confidence == mine.confidence
