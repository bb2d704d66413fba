"""Which document the gate expects an answer to cite, read off real turns: the gate's citation
figure is computed on nothing when this comes back empty."""

from __future__ import annotations

from bot.answering.generation import EchoGenerator
from bot.training.gate import gold_documents
from tests.support.answering import LUKAS, msg, orchestrator


async def test_an_approved_turn_s_gold_is_the_document_its_answer_cited(example_store, embedder, sqlite_ledger) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("How do I reset my VPN password?", LUKAS))
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row is not None and row.cited and all(isinstance(c, str) for c in row.cited)  # chunk ids
    approved = {"verdict": "correct", "score": 5, "answer": answer.text}
    assert gold_documents(row, approved) == sorted({s.doc_id for s in answer.sources})
    assert "it/vpn-password-reset.md" in gold_documents(row, approved)


async def test_a_corrected_turn_s_gold_is_the_served_passage_nearest_the_correction(
    example_store, embedder, sqlite_ledger
) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("How do I reset my VPN password?", LUKAS))
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row is not None
    best = row.retrieved[0]
    corrected = {"verdict": "incorrect", "correction": best["text"]}
    assert gold_documents(row, corrected) == [best["doc_id"]]
