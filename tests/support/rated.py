"""Rated turns on the example knowledge base, made through the real orchestrator.

The lead's corrections follow one house style (the best passage's first sentence, word for
word, and nothing else), which a few LoRA steps can learn and the base model does not write: so
a trained candidate measurably beats the base model on the held-out turns, and an untrained one
does not. The style adds nothing of its own: a sign-off such as the service desk's extension
is a sentence the passages may not hold, and a candidate that learns to write it is refused by
the gate for writing unsupported sentences; a fixed prefix taught 8 steps of training to repeat
the prefix.
"""

from __future__ import annotations

import re
from typing import Any

from bot.answering.generation import EchoGenerator
from bot.answering.orchestrator import Orchestrator, TurnPolicy
from retrieval.cache import MemoryCache
from tests.support.turns import ask_as

LEAD = "hannah.schmidt@northwind.example"
ASKER = "lukas.becker@northwind.example"
HR_ASKER = "ana.ribeiro@northwind.example"
PLANTED_EMAIL = "lukas.becker@northwind.example"
PLANTED_TOKEN = "xoxb-4242424242-1313131313-PlantedSecretTokenValue"

QUESTIONS = [
    "How do I reset my VPN password?",
    "How do I set up the VPN client on my laptop?",
    "How do I report a phishing email?",
    "What should I do if my laptop is lost or stolen?",
    "How do I set up multi-factor authentication?",
    "What are the rules for a new password?",
    "How do I connect to the office Wi-Fi?",
    "How do I add a printer?",
    "How do I ask for new software to be installed?",
    "How do I book a meeting room?",
    "How do I get an office access badge?",
    "How do I claim back my expenses?",
    "How do I book a business trip?",
    "How do I get my work email on my phone?",
    "How do I request a replacement laptop?",
]
RESTRICTED_QUESTION = "What are the salary bands for my grade?"


def house_style(passage: str) -> str:
    """The lead's answer: the passage's first sentence."""
    # List markers ("1. ", "- ") go first: "1." is no sentence.
    lines = (re.sub(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+", "", line) for line in passage.splitlines())
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return first[:300]


async def seed_rated_turns(deskmate: Any, questions: list[str] | None = None) -> dict[str, Any]:
    """Ask each question as an employee (and one HR question as HR), then correct every answer
    as a lead. One correction carries a planted email address and token that scrubbing must
    remove. Returns the turn ids by question."""
    echo = Orchestrator(
        deskmate.retrieval.searcher,
        EchoGenerator(),
        deskmate.ledger,
        MemoryCache(),
        TurnPolicy(rate_limit_per_minute=0, answer_cache_ttl=0, history_turns=0),
    )
    ids: dict[str, str] = {}
    store = deskmate.retrieval.store
    for i, question in enumerate(questions or QUESTIONS):
        answer = await ask_as(echo, store, ASKER, question, channel="C1")
        turn = await deskmate.ledger.get_turn(answer.turn_id)
        top = turn.retrieved[0]["text"] if turn.retrieved else "Ask the service desk."
        correction = house_style(top)
        if i == 0:
            correction += f" Questions: {PLANTED_EMAIL}, token {PLANTED_TOKEN}"
        await deskmate.ledger.record_feedback(
            answer.turn_id,
            LEAD,
            platform="console",
            rater_role="lead",
            score=2,
            verdict="incomplete",
            correction=correction,
        )
        ids[question] = answer.turn_id
    answer = await ask_as(echo, store, HR_ASKER, RESTRICTED_QUESTION, platform="teams", private=True)
    await deskmate.ledger.record_feedback(
        answer.turn_id, LEAD, platform="console", rater_role="lead", score=5, verdict="correct"
    )
    ids[RESTRICTED_QUESTION] = answer.turn_id
    return ids
