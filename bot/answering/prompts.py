"""Versioned prompt templates.

A template never changes once a turn has been served with it: a rated turn must be replayable
exactly, and training must see the prompt the model saw. A new wording is a new version.

SmolLM2-135M reads facts only when they sit in the user turn ("Context: … Question: …"); facts
in the system prompt are ignored. So the system prompt stays short and everything the model
must use goes into the user turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.records import Hit

ChatMessage = dict[str, str]

#: Phrases a model uses when the context does not hold the answer.
UNKNOWN_PATTERNS = re.compile(
    r"\b(i don'?t know|i do not know|does not say|doesn'?t say|not (?:mentioned|covered|stated|"
    r"specified|provided) in the (?:context|knowledge base)|no information (?:about|on)|"
    r"cannot (?:tell|find)|can'?t (?:tell|find))\b",
    re.IGNORECASE,
)

#: Lines in a knowledge-base passage that try to steer the model. They are dropped from the
#: context: a 135M model follows instructions wherever they appear. Narrow on purpose: a
#: manual's "You are now connected" or "act as a hotspot" must stay.
INJECTION_PATTERNS = re.compile(
    r"(ignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier) (?:instructions|prompts?|rules)|"
    r"disregard (?:all |any )?(?:the )?(?:previous|prior|above) (?:instructions|prompts?|rules)|"
    r"new instructions:|(?:reveal|print|repeat) (?:your|the) system prompt)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    context_item: str
    user: str
    user_fact_intro: str
    passage_chars: int
    user_without_context: str = "Question: {question}"


TEMPLATES: dict[str, PromptTemplate] = {
    "v1": PromptTemplate(
        version="v1",
        system="You are Deskmate, a helpful company support assistant. Answer briefly and "
        "only from the context. If the context does not answer the question, say: "
        "I don't know.",
        context_item="[{number}] {title}: {text}",
        user="Context:\n{context}\n{facts}\nQuestion: {question}",
        user_fact_intro="About the person asking: ",
        passage_chars=700,
    ),
}
DEFAULT_VERSION = "v1"


def sanitise_passage(text: str) -> tuple[str, bool]:
    """The passage without lines that try to give the model instructions, and whether any
    were removed."""
    kept, dropped = [], False
    for line in text.splitlines():
        if INJECTION_PATTERNS.search(line):
            dropped = True
            continue
        kept.append(line)
    return " ".join(" ".join(kept).split()), dropped


def build_messages(
    question: str,
    hits: Sequence[Hit],
    user_facts: Sequence[str] = (),
    *,
    version: str = DEFAULT_VERSION,
) -> tuple[list[ChatMessage], list[str]]:
    """The chat messages for one turn, and the ids of passages whose injected instructions
    were removed. Passages are numbered from 1 in the order given; `[n]` in the answer cites
    `hits[n-1]`."""
    template = TEMPLATES[version]
    items, tampered = [], []
    for number, hit in enumerate(hits, start=1):
        text, dropped = sanitise_passage(hit.chunk.text)
        if dropped:
            tampered.append(hit.chunk.id)
        title = " > ".join(p for p in (hit.chunk.title, hit.chunk.heading) if p)
        items.append(template.context_item.format(number=number, title=title, text=text[: template.passage_chars]))
    facts = template.user_fact_intro + " ".join(user_facts) + "\n" if user_facts else ""
    if items:
        user = template.user.format(context="\n".join(items), facts=facts, question=question)
    else:
        user = template.user_without_context.format(question=question)
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}], tampered


def says_unknown(text: str) -> bool:
    """True when the model says the context does not hold the answer."""
    return bool(UNKNOWN_PATTERNS.search(text)) or not text.strip()


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def cut_repetition(text: str, *, min_chars: int = 12) -> tuple[str, bool]:
    """The text up to the first sentence that repeats an earlier one, and whether it was cut.

    Small models fall into loops ("She is a Marketing Manager. She is a Marketing Manager…");
    a repeated sentence never adds information, so the answer ends before it."""
    seen: set[str] = set()
    position = 0
    for part in SENTENCE_END.split(text):
        key = " ".join(part.lower().split())
        start = text.find(part, position)
        if len(key) >= min_chars:
            if key in seen:
                return text[:start].rstrip(), True
            seen.add(key)
        position = start + len(part)
    return text, False
