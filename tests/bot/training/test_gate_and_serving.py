"""What the gate reads off real turns (which document an answer should cite: its citation
figure is computed on nothing when this comes back empty), and how a live adapter is served
(the answer strategy its gate measured, also when it was loaded at start-up)."""

from __future__ import annotations

from pathlib import Path

from bot.answering.generation import EchoGenerator
from bot.training import adapters
from bot.training.gate import gold_documents
from finetune.model import BASE_MODEL_ID
from finetune.registry import Registry, new_name
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


async def test_an_adapter_loaded_at_start_up_answers_the_way_its_gate_measured(
    tmp_path: Path, sqlite_ledger, blank_adapter: Path
) -> None:
    registry = Registry(tmp_path / "adapters")
    name = new_name(BASE_MODEL_ID)
    measured = {"answer_strategy": "quote", "why": "quoting scores higher", "compared_turns": 3}
    info = registry.register(name, blank_adapter, {"base_model": BASE_MODEL_ID, "evaluation": {"strategy": measured}})
    await adapters.record_candidate(sqlite_ledger, info, "candidate")
    generator = EchoGenerator()
    await adapters.promote(sqlite_ledger, registry, name, actor="tests", generator=generator)
    await generator.use_adapter(name)  # as bot/wiring.py does with DESKMATE_ADAPTER at start-up
    assert generator.adapter_strategy == ""
    assert await adapters.apply_live(sqlite_ledger, registry, generator) == name
    assert generator.adapter_strategy == "quote"
    await adapters.rollback(sqlite_ledger, registry, actor="tests", generator=generator)
    assert await adapters.apply_live(sqlite_ledger, registry, generator) == ""
    assert (generator.adapter, generator.adapter_strategy) == ("", "")
