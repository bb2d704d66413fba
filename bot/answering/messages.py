"""The platform-neutral shapes of one turn: the message that comes in, the events that stream
out, and the answer that ends it. Slack, Teams, the web page and the CLI all speak these."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

# "eval": the evaluation gate asking on a scratch ledger (bot/training/gate.py)
Platform = Literal["slack", "teams", "web", "cli", "bench", "eval"]


@dataclass(frozen=True)
class IncomingMessage:
    """A question as a channel adapter hands it over.

    `thread_id` groups a conversation (a Slack thread, a Teams conversation, a web session);
    `private` marks direct messages and assistant threads, as the turn records them.
    """

    platform: Platform
    user_key: str
    text: str
    user_name: str = ""
    workspace: str = ""
    channel: str = ""
    thread_id: str = ""
    groups: tuple[str, ...] = ()
    private: bool = False

    def __post_init__(self) -> None:
        # A NUL cannot be stored by PostgreSQL (the turn would be dead-lettered, and the
        # thread's history would carry it into every later turn); it carries no meaning.
        for name in ("text", "user_name"):
            value = getattr(self, name)
            if "\x00" in value:
                object.__setattr__(self, name, value.replace("\x00", ""))

    @property
    def conversation_key(self) -> str:
        """Where this conversation's history lives: one thread, on one platform."""
        return f"{self.platform}:{self.workspace}:{self.channel}:{self.thread_id or self.user_key}"


# http(s), then no whitespace, control character or character that ends a link in Slack's
# `<url|text>` or an HTML attribute.
LINK = re.compile(r"https?://[^\s<>|\"'`\\\x00-\x1f\x7f]+", re.IGNORECASE)


def safe_link(url: str) -> str:
    """`url` when it is an http(s) link, else "". A document's URL comes from whoever wrote its
    front matter; a `javascript:` or `data:` one would run in the reader's browser wherever it
    is rendered as a link, so no face ever gets one."""
    candidate = (url or "").strip()
    if not LINK.fullmatch(candidate):
        return ""
    return candidate


@dataclass(frozen=True)
class Source:
    """A document an answer cites: what a user clicks to check it. Its `url` is always an
    http(s) link or empty (see `safe_link`), whichever face renders it."""

    number: int
    doc_id: str
    title: str
    url: str
    heading: str = ""
    chunk_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", safe_link(self.url))

    def to_dict(self) -> dict[str, str | int]:
        return {
            "number": self.number,
            "doc_id": self.doc_id,
            "title": self.title,
            "url": self.url,
            "heading": self.heading,
            "chunk_id": self.chunk_id,
        }


Outcome = Literal[
    "answered",
    "unknown",
    "smalltalk",  # a greeting or thanks, answered kindly and not searched
    "rate_limited",
    "invalid",
    "failed",
]


@dataclass
class Answer:
    """The end of a turn: the text as sent, its sources, and how it came about."""

    turn_id: str
    reference: str
    text: str
    outcome: Outcome
    sources: list[Source] = field(default_factory=list)
    confidence: float = 0.0
    cache_hit: bool = False
    model: str = ""
    adapter_version: str = ""
    notice: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "turn_id": self.turn_id,
            "reference": self.reference,
            "text": self.text,
            "outcome": self.outcome,
            "sources": [s.to_dict() for s in self.sources],
            "confidence": round(self.confidence, 4),
            "cache_hit": self.cache_hit,
            "model": self.model,
            "adapter_version": self.adapter_version,
            "notice": self.notice,
        }


@dataclass(frozen=True)
class Status:
    """Progress a channel may show ("Searching the knowledge base…")."""

    text: str


@dataclass(frozen=True)
class Delta:
    """A piece of answer text, in order; the pieces joined are the final text."""

    text: str


@dataclass(frozen=True)
class Done:
    """The last event of every turn, successful or not."""

    answer: Answer


AnswerEvent = Status | Delta | Done
