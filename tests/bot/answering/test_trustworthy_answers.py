"""What makes an answer trustworthy, through the real orchestrator: answers for the person who
asked, sentences the passages support (and the ones they do not, removed and on record),
citations that point at what supports them, honest declines, and the awkward messages (a
greeting, thanks, another language, yes/no, two documents, documents that disagree)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.answering.generation import EchoGenerator, RemoteGenerator
from bot.answering.messages import IncomingMessage
from retrieval.backends import open_store
from retrieval.chunking import Document
from retrieval.ingest import Ingestor
from retrieval.users import import_users
from tests.support.answering import ANA, CONTACT, LUKAS, msg, orchestrator
from tests.support.model_server import scripted_model

EMILY = dict(user_key="emily.carter@northwind.example", user_name="Emily Carter", groups=())
LEAVE = "How many days of annual leave do I get each year?"


@pytest.mark.parametrize(("who", "mine", "not_mine"), [(ANA, "25", "28"), (LUKAS, "28", "25"), (EMILY, "20 PTO", "28")])
async def test_the_row_of_the_asker_s_country_is_the_answer(
    who, mine, not_mine, example_store, embedder, sqlite_ledger
) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg(LEAVE, who))
    assert answer.outcome == "answered", answer.text
    assert f"working days): {mine}" in answer.text or f": {mine}" in answer.text, answer.text
    assert f"(working days): {not_mine};" not in answer.text
    assert [s.doc_id for s in answer.sources] == ["hr/annual-leave-holidays.md"]
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.strategy == "quote" and row.unsupported == 0 and row.support
    assert all(s["supported"] for s in row.support if s["claims"])
    assert any(who["user_name"] in fact for fact in row.user_facts)  # what decided the row is on record


async def test_the_asker_s_laptop_picks_the_steps_for_their_system(example_store, embedder, sqlite_ledger) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    lukas = await bot.ask(msg("How do I install the VPN client on my laptop?", LUKAS))  # ThinkPad with Ubuntu
    emily = await bot.ask(msg("How do I install the VPN client on my laptop?", EMILY, thread="t2"))  # MacBook
    assert lukas.outcome == emily.outcome == "answered"
    assert lukas.text != emily.text
    assert "apt" in lukas.text.lower() or "linux" in lukas.text.lower() or "ubuntu" in lukas.text.lower(), lukas.text


@pytest.mark.parametrize(("who", "mine", "not_mine"), [(ANA, "Win + L", "keychain"), (EMILY, "keychain", "Win + L")])
async def test_the_list_item_labelled_with_the_asker_s_system_is_quoted(
    who, mine, not_mine, example_store, embedder, sqlite_ledger
) -> None:
    # "- **Windows (Dell Latitude):** …", "- **macOS:** …": labelled items are alternatives.
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    question = "I just reset my Northwind ID password. What do I need to do on my laptop now?"
    answer = await bot.ask(msg(question, who))
    assert answer.outcome == "answered" and mine in answer.text and not_mine not in answer.text, answer.text


async def test_the_error_the_question_names_picks_its_row_not_a_sibling_sharing_its_prefix(
    example_store, embedder, sqlite_ledger
) -> None:
    # Every row of the VPN errors table starts with "NG-": that word names the table, not a row.
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("The VPN says NG-417 device certificate missing. How do I fix it?", LUKAS))
    assert answer.outcome == "answered" and "northgate enroll" in answer.text, answer.text
    assert "NG-401" not in answer.text


async def test_the_mac_user_gets_the_mac_steps_not_the_page_s_introduction(
    example_store, embedder, sqlite_ledger
) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("How do I install the VPN client on my laptop?", EMILY))
    assert "Self Service" in answer.text and "is the client that connects" not in answer.text, answer.text


async def test_a_sentence_the_passages_do_not_support_is_removed_and_recorded(
    example_store, embedder, sqlite_ledger
) -> None:
    reply = (
        "Go to id.northwind.example/reset and follow the steps to reset your Northwind ID password [2]. "
        "The new password must be exactly 99 characters and is mailed to your manager [1]."
    )
    async with scripted_model([reply]) as (url, _seen):
        bot = orchestrator(
            example_store, embedder, sqlite_ledger, RemoteGenerator(url, retries=0), answer_strategy="generate"
        )
        answer = await bot.ask(msg("How do I reset my VPN password?"))
        await bot.generator.close()
    assert answer.outcome == "answered", answer.text
    assert "99 characters" not in answer.text and "id.northwind.example/reset" in answer.text
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.strategy == "generate" and row.unsupported == 1
    flagged = [s for s in row.support if not s["supported"]]
    assert len(flagged) == 1 and "99 characters" in flagged[0]["sentence"]
    kept = [s for s in row.support if s["supported"]]
    # Cited to the passage that says it, whatever number the model wrote.
    cited_number = kept[0]["passage"]
    assert f"[{cited_number}]" in answer.text
    assert row.retrieved[cited_number - 1]["doc_id"] in {s.doc_id for s in answer.sources}
    assert row.risk >= 2  # a lead sees it early


async def test_an_answer_with_nothing_supported_falls_back_to_the_related_documents(
    example_store, embedder, sqlite_ledger
) -> None:
    async with scripted_model(["You can count policies with the count() method of the count() function."]) as (url, _):
        bot = orchestrator(
            example_store, embedder, sqlite_ledger, RemoteGenerator(url, retries=0), answer_strategy="generate"
        )
        answer = await bot.ask(msg("How do I reset my VPN password?"))
        await bot.generator.close()
    assert answer.outcome == "unknown"
    assert "don't answer this" in answer.text and CONTACT in answer.text and "count()" not in answer.text
    assert answer.sources and answer.sources[0].doc_id == "it/vpn-password-reset.md"
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.unsupported == 1 and row.status == "unknown"


async def test_an_answer_that_cites_nothing_is_not_attributed_to_the_first_passage(
    example_store, embedder, sqlite_ledger
) -> None:
    async with scripted_model(["Sure. Happy to help with that. Have a nice day."]) as (url, _):
        bot = orchestrator(
            example_store, embedder, sqlite_ledger, RemoteGenerator(url, retries=0), answer_strategy="generate"
        )
        answer = await bot.ask(msg("How do I reset my VPN password?"))
        await bot.generator.close()
    # No sentence makes a claim the passages hold: nothing may be cited as its source.
    assert answer.outcome == "unknown" and "don't answer this" in answer.text


async def test_below_the_answerability_threshold_it_declines_before_writing(
    example_store, embedder, sqlite_ledger
) -> None:
    async with scripted_model(["Anything at all [1]."]) as (url, seen):
        strict = orchestrator(
            example_store,
            embedder,
            sqlite_ledger,
            RemoteGenerator(url, retries=0),
            answer_strategy="generate",
            answerable_min=0.99,
        )
        answer = await strict.ask(msg("How do I reset my VPN password?"))
        await strict.generator.close()
    assert answer.outcome == "unknown" and "don't answer this" in answer.text
    assert seen == []  # the model was never asked
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.answerability is not None and row.answerability < 0.99


@pytest.mark.parametrize("text", ["hi", "Hello there!", "thanks", "Thank you so much 🙏", "ok, got it"])
async def test_greetings_and_thanks_are_answered_kindly_without_a_search(
    text, example_store, embedder, sqlite_ledger
) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg(text))
    assert answer.outcome == "smalltalk" and not answer.sources
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.status == "smalltalk" and row.retrieved == [] and row.question == text


async def test_a_greeting_with_a_question_is_a_question(example_store, embedder, sqlite_ledger) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("Hi! How do I reset my VPN password?"))
    assert answer.outcome == "answered" and answer.sources[0].doc_id == "it/vpn-password-reset.md"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Wie viele Urlaubstage habe ich pro Jahr?", "German"),
        ("Como faço para redefinir a senha da VPN?", "Portuguese"),
    ],
)
async def test_a_question_in_another_language_is_told_to_ask_in_english(
    text, language, example_store, embedder, sqlite_ledger
) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg(text))
    assert answer.outcome == "unknown" and language in answer.text and "English" in answer.text
    assert CONTACT in answer.text and not answer.sources
    assert (await sqlite_ledger.get_turn(answer.turn_id)).retrieved == []


async def test_a_yes_no_question_gets_the_sentence_that_settles_it(example_store, embedder, sqlite_ledger) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("Can I carry over unused leave days into next year?", ANA))
    assert answer.outcome == "answered", answer.text
    assert "Up to 5 days" in answer.text and "[" in answer.text  # quoted and cited, not a bare yes
    assert not answer.text.lower().startswith(("yes", "no"))


async def _two_document_store(tmp_path: Path, embedder, documents: list[Document]):
    store = await open_store(f"lancedb://{tmp_path / 'kb'}", dim=embedder.dim)
    await Ingestor(store, embedder).ingest_documents(documents, finish=True)
    return store


async def test_an_answer_that_spans_two_documents_cites_both(tmp_path, embedder, sqlite_ledger) -> None:
    store = await _two_document_store(
        tmp_path,
        embedder,
        [
            Document("facilities/visitor-badges.md", "Visitor badges", "Visitor badges are printed at reception."),
            Document("facilities/visitor-parking.md", "Visitor parking", "Visitor parking spaces are booked in Lobby."),
        ],
    )
    bot = orchestrator(store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("Where do visitors get badges and parking spaces?"))
    await store.close()
    assert answer.outcome == "answered", answer.text
    assert "reception" in answer.text and "Lobby" in answer.text
    assert {s.doc_id for s in answer.sources} == {"facilities/visitor-badges.md", "facilities/visitor-parking.md"}


async def test_documents_that_disagree_are_both_shown_with_a_warning(tmp_path, embedder, sqlite_ledger) -> None:
    store = await _two_document_store(
        tmp_path,
        embedder,
        [
            Document("finance/travel.md", "Travel policy", "The nightly hotel cap in Berlin is EUR 150."),
            Document("finance/travel-2023.md", "Travel policy 2023", "The nightly hotel cap in Berlin is EUR 130."),
        ],
    )
    bot = orchestrator(store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("What is the nightly hotel cap in Berlin?"))
    await store.close()
    assert answer.outcome == "answered", answer.text
    assert "EUR 150" in answer.text and "EUR 130" in answer.text
    assert "disagree" in answer.text and CONTACT in answer.text
    assert len(answer.sources) == 2


async def test_a_cached_answer_keeps_its_support_on_record(example_store, embedder, sqlite_ledger) -> None:
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    first = await bot.ask(IncomingMessage(platform="web", user_key="a@x.example", text=LEAVE, thread_id="1"))
    again = await bot.ask(IncomingMessage(platform="web", user_key="a@x.example", text=LEAVE, thread_id="2"))
    assert again.cache_hit and again.text == first.text
    row = await sqlite_ledger.get_turn(again.turn_id)
    assert row.support == (await sqlite_ledger.get_turn(first.turn_id)).support and row.strategy == "quote"


@pytest.mark.parametrize(
    ("who", "leader", "not_theirs"), [(LUKAS, "Jonas Richter", "Rachel Kim"), (EMILY, "Rachel Kim", "Jonas Richter")]
)
async def test_my_department_is_the_asker_s_department(
    who, leader, not_theirs, example_store, embedder, sqlite_ledger
) -> None:
    # "my department" names no department; the directory does (Engineering, Sales), and the
    # department table's row says "Leader", not "leads".
    bot = orchestrator(example_store, embedder, sqlite_ledger, EchoGenerator())
    answer = await bot.ask(msg("Who leads my department?", who))
    assert answer.outcome == "answered" and leader in answer.text and not_theirs not in answer.text, answer.text
    assert [s.doc_id for s in answer.sources] == ["company/org-and-contacts.md"]


@pytest.mark.parametrize(("measured", "strategy"), [("quote", "quote"), ("generate", "generate"), ("", "generate")])
async def test_auto_follows_how_the_gate_found_the_live_adapter_answers_best(
    measured, strategy, example_store, embedder, sqlite_ledger
) -> None:
    generator = EchoGenerator()
    await generator.use_adapter("smollm2-135m-instruct-20261207-000000-abcd")
    generator.adapter_strategy = measured  # what adapters.apply_live reads off the gate's report
    bot = orchestrator(example_store, embedder, sqlite_ledger, generator)
    answer = await bot.ask(msg(LEAVE, ANA))
    row = await sqlite_ledger.get_turn(answer.turn_id)
    assert row.strategy == strategy and row.adapter_version == generator.adapter


async def test_an_answer_cached_for_the_asker_is_not_served_after_their_profile_changes(
    private_store_url, embedder, sqlite_ledger
) -> None:
    store = await open_store(private_store_url, dim=embedder.dim)
    try:
        bot = orchestrator(store, embedder, sqlite_ledger, EchoGenerator(), answer_cache_ttl=600)
        before = await bot.ask(msg(LEAVE, LUKAS, thread="a"))
        assert ": 28" in before.text, before.text
        profile = await store.get_user(LUKAS["user_key"])
        moved = replace(profile, location="Lisbon", extra={**profile.extra, "country": "Portugal"})
        await import_users([moved], store, embedder)
        after = await bot.ask(msg(LEAVE, LUKAS, thread="b"))
        assert not after.cache_hit and ": 25" in after.text and ": 28" not in after.text, after.text
    finally:
        await store.close()
