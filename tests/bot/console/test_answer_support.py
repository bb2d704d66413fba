"""The sentence check in the review console: the queue's and the export's `support` filter, the
turn page's support per sentence, and what a lead outside a passage's group sees of it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.console.queries import queue
from bot.console.redaction import FACTS_HIDDEN, Lens, Person, Pseudonyms, Reader
from bot.ledger.filters import Filters
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd
from tests.support.console import ADMIN, EMPLOYEE, LEAD, signed_in
from tests.support.server import RunningServer, ServerFactory
from tests.support.turns import new_turn

ANA = "ana.ribeiro@northwind.example"
IT_ADMIN = ADMIN  # Sofia Martins: groups [it-admin], not hr
MARKER = "restricted to hr: you are not in that group"

VPN_PASSAGE = {
    "chunk_id": "it/vpn-password-reset.md#0",
    "doc_id": "vpn-password-reset",
    "title": "Resetting your VPN password",
    "heading": "",
    "url": "",
    "groups": [],
    "score": 0.82,
    "text": "Open vpn.northwind.example and choose Reset password. Confirm the reset with your YubiKey.",
}
PHISHING_PASSAGE = {
    "chunk_id": "security/phishing.md#0",
    "doc_id": "reporting-phishing",
    "title": "Reporting a phishing email",
    "heading": "",
    "url": "",
    "groups": [],
    "score": 0.77,
    "text": "Use the Report phishing button in Outlook; the security team reviews every report within a day.",
}
SALARY_PASSAGE = {
    "chunk_id": "hr/salary-bands.md#0",
    "doc_id": "salary-bands-compensation-review",
    "title": "Salary bands and compensation review",
    "heading": "",
    "url": "",
    "groups": ["hr"],
    "score": 0.9,
    "text": "Band L4 in Lisbon is 50,000 - 66,000 EUR a year.",
}

SUPPORTED = "Open vpn.northwind.example and choose Reset password."
SUPPORTED_EVIDENCE = VPN_PASSAGE["text"][:53]
# Invented by the model, with markup a lead's browser must show as text, never run.
INVENTED = "The VPN also resets itself every Friday at noon <img src=x onerror=alert(1)>."
SALARY_SENTENCE = "Band L4 in Lisbon is 50,000 - 66,000 EUR a year."
SALARY_INVENTED = "Bands are reviewed every March by the CFO."


def sentence(text: str, supported: bool, passage: int | None, evidence: str, score: float) -> dict[str, Any]:
    return {
        "sentence": text,
        "supported": supported,
        "score": score,
        "passage": passage,
        "evidence": evidence,
        "claims": True,
    }


@dataclass
class Turns:
    invented: str  # an answer with one unsupported sentence (removed) and one supported
    clean: str  # every sentence supported
    old: str  # answered before the sentence check existed
    smalltalk: str  # "thanks!"
    salary: str  # an hr-only context, with one unsupported sentence


async def record(ledger: Ledger, user: str, question: str, end: TurnEnd) -> str:
    start = new_turn(question, user_key=user, platform="slack", channel="C1", thread_id=str(uuid.uuid4()))
    await ledger.record_turn(start, end)
    return start.id


async def seed(ledger: Ledger) -> Turns:
    """Five turns as the orchestrator records them, through the real ledger."""
    return Turns(
        invented=await record(
            ledger,
            EMPLOYEE,
            "How do I reset my VPN password?",
            TurnEnd(
                status="answered",
                answer=f"{SUPPORTED} [1]",
                retrieved=[VPN_PASSAGE],
                cited=[VPN_PASSAGE["chunk_id"]],
                strategy="generate",
                support=[
                    sentence(SUPPORTED, True, 1, SUPPORTED_EVIDENCE, 0.91),
                    sentence(INVENTED, False, 1, "Confirm the reset with your YubiKey.", 0.22),
                    {**sentence("I hope this helps.", True, None, "", 1.0), "claims": False},
                ],
                unsupported=1,
                confidence=0.8,
            ),
        ),
        clean=await record(
            ledger,
            ANA,
            "How do I report a phishing email?",
            TurnEnd(
                status="answered",
                answer="Use the Report phishing button in Outlook. [1]",
                retrieved=[PHISHING_PASSAGE],
                cited=[PHISHING_PASSAGE["chunk_id"]],
                strategy="quote",
                support=[
                    sentence("Use the Report phishing button in Outlook.", True, 1, PHISHING_PASSAGE["text"], 1.0)
                ],
                confidence=0.9,
            ),
        ),
        old=await record(
            ledger,
            EMPLOYEE,
            "Where do I order a new monitor?",
            TurnEnd(status="answered", answer="Order it in the IT shop.", confidence=0.7),
        ),
        smalltalk=await record(
            ledger,
            EMPLOYEE,
            "thanks a lot!",
            TurnEnd(status="smalltalk", answer="You're welcome! Ask me again any time.", strategy="none"),
        ),
        salary=await record(
            ledger,
            ANA,
            "What is the salary band for L4 in Lisbon?",
            TurnEnd(
                status="answered",
                answer=f"{SALARY_SENTENCE} [1]",
                retrieved=[SALARY_PASSAGE],
                cited=[SALARY_PASSAGE["chunk_id"]],
                strategy="generate",
                support=[
                    sentence(SALARY_SENTENCE, True, 1, SALARY_PASSAGE["text"], 0.97),
                    sentence(SALARY_INVENTED, False, 1, SALARY_PASSAGE["text"], 0.3),
                ],
                unsupported=1,
                confidence=0.8,
            ),
        ),
    )


QUESTIONS = {
    "invented": "reset my VPN password",
    "clean": "report a phishing email",
    "old": "order a new monitor",
    "smalltalk": "thanks a lot",
    "salary": "salary band for L4",
}


def listed(page: str) -> set[str]:
    return {name for name, question in QUESTIONS.items() if question in page}


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> str:
    async with http.get(url, params=params) as r:
        body = await r.text()
        assert r.status == 200, body
        return body


async def test_the_queue_and_the_export_filter_on_support(serve_console: ServerFactory) -> None:
    server: RunningServer
    async with serve_console() as server:
        turns = await seed(server.deskmate.ledger)
        for turn_id in (turns.invented, turns.clean, turns.old):
            await server.deskmate.ledger.record_feedback(turn_id, LEAD, platform="console", rater_role="lead", score=3)
        queue_url = server.url + "/console/queue"
        lead = await signed_in(server, LEAD)
        async with lead:
            everything = await get(lead, queue_url)
            assert listed(everything) == set(QUESTIONS)
            assert '<option value="smalltalk"' in everything and "Has unsupported sentences" in everything
            assert everything.count("⚠ 1 unsupported") == 2  # the invented answer and the salary one

            flagged = await get(lead, queue_url, support="unsupported")
            assert listed(flagged) == {"invented", "salary"}
            assert '<option value="unsupported" selected' in flagged
            assert "support=unsupported" in flagged  # the export links keep the filter

            clean = await get(lead, queue_url, support="supported")
            assert listed(clean) == {"clean"}  # not the old turn, nor the greeting
            assert "⚠" not in clean

            assert listed(await get(lead, queue_url, support="nonsense")) == set(QUESTIONS)
            assert listed(await get(lead, queue_url, status="smalltalk")) == {"smalltalk"}

            exported = await get(lead, server.url + "/console/export.jsonl", support="unsupported")
            assert [json.loads(line)["turn_id"] for line in exported.splitlines()] == [turns.invented]
            exported = await get(lead, server.url + "/console/export.jsonl", support="supported")
            assert [json.loads(line)["turn_id"] for line in exported.splitlines()] == [turns.clean]


async def test_the_support_filter_on_every_ledger_backend(ledger: Ledger) -> None:
    turns = await seed(ledger)

    async def ids(support: str) -> set[str]:
        rows, _ = await queue(ledger, Filters(support=support))
        return {r.turn.id for r in rows}

    assert await ids("unsupported") == {turns.invented, turns.salary}
    assert await ids("supported") == {turns.clean}
    assert await ids("") == {turns.invented, turns.clean, turns.old, turns.smalltalk, turns.salary}
    assert Filters.from_query({"support": "supported"}).as_query() == {"support": "supported"}
    assert Filters.from_query({"support": "<b>"}).support == ""


async def test_the_turn_page_shows_each_sentence_and_what_supports_it(serve_console: ServerFactory) -> None:
    async with serve_console() as server:
        turns = await seed(server.deskmate.ledger)
        lead = await signed_in(server, LEAD)
        async with lead:
            page = await get(lead, f"{server.url}/console/turns/{turns.invented}")
            clean = await get(lead, f"{server.url}/console/turns/{turns.clean}")
            old = await get(lead, f"{server.url}/console/turns/{turns.old}")
            smalltalk = await get(lead, f"{server.url}/console/turns/{turns.smalltalk}")

    section = page[page.index("Support per sentence") :]
    section = section[: section.index("</section>")]
    items = section.split("<li ")[1:]
    assert len(items) == 3
    supported, invented, filler = items
    assert supported.startswith('class="supported"') and SUPPORTED in supported
    assert "supported by passage 1" in supported and SUPPORTED_EVIDENCE in supported
    assert invented.startswith('class="unsupported"')
    assert "not supported by the passages — removed from the answer" in invented
    assert "The VPN also resets itself every Friday at noon" in invented
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in invented
    assert filler.startswith('class="filler"') and "no claim to check" in filler
    assert "Written by the model and checked" in page and "⚠ 1 unsupported" in section
    # The answer as sent lacks the removed sentence.
    answer = page[page.index('<blockquote class="answer') :]
    assert "Friday" not in answer[: answer.index("</blockquote>")]

    assert "Quoted from the passages" in clean and 'class="unsupported"' not in clean
    assert "No sentence check recorded (older turn)" in old and 'class="supported"' not in old
    assert "older turn" not in smalltalk and "No sentence of this answer was checked" in smalltalk


async def test_a_lead_outside_the_group_sees_no_sentence_nor_evidence_of_a_restricted_answer(
    serve_console: ServerFactory,
) -> None:
    async with serve_console() as server:
        turns = await seed(server.deskmate.ledger)
        it_admin = await signed_in(server, IT_ADMIN)
        hr_lead = await signed_in(server, LEAD)  # Hannah Schmidt is in hr
        async with it_admin, hr_lead:
            hidden = await get(it_admin, f"{server.url}/console/turns/{turns.salary}")
            shown = await get(hr_lead, f"{server.url}/console/turns/{turns.salary}")
            hidden_queue = await get(it_admin, server.url + "/console/queue", support="unsupported")

    section = hidden[hidden.index("Support per sentence") :]
    section = section[: section.index("</section>")]
    assert section.count(MARKER) == 4  # two sentences and their evidence
    for secret in ("50,000", "reviewed every March", "Band L4"):
        assert secret not in hidden, secret
    assert 'class="unsupported"' in section  # what the check found stays visible, not what it read
    assert SALARY_INVENTED in shown and "50,000 - 66,000" in shown and MARKER not in shown
    assert "salary band for L4" in hidden_queue and "restricted: hr" in hidden_queue


def test_pseudonymous_pages_hide_the_askers_facts_used_as_evidence() -> None:
    lens = Lens(Reader.of([], see_all=True), Pseudonyms([Person(ANA, ("Ana Ribeiro",), "person-7")]))
    [fact, passage] = lens.support(
        (),
        [
            sentence("Ana Ribeiro, your manager is Hannah Schmidt.", True, 0, "Manager: Hannah Schmidt (Berlin)", 0.9),
            sentence("Ask ana.ribeiro@northwind.example to reset it.", True, 1, "Ana Ribeiro resets badges.", 0.8),
        ],
    )
    assert fact.sentence == "person-7, your manager is Hannah Schmidt." and fact.evidence == FACTS_HIDDEN
    assert fact.passage == 0
    assert passage.sentence == "Ask person-7 to reset it." and passage.evidence == "person-7 resets badges."
    plain = Lens(Reader.of([], see_all=True)).support((), [sentence("x", True, 0, "Manager: Hannah Schmidt", 0.9)])
    assert plain[0].evidence == "Manager: Hannah Schmidt"
