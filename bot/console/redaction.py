"""What one console viewer may read of a turn.

Two rules, applied to every page and export of the console (never to the ledger, nor to
`bot.feedback.export.rated_turns`, which retraining reads as served):

- Access groups. A lead reads the passages their own groups allow (their directory groups and
  any groups the SSO proxy passes), like an employee asking Deskmate would; the people listed in
  `console_see_all` read everything. A turn whose context held a passage the viewer may not
  read shows a marker instead of that passage, of its lines in the prompt, of the answer and of
  every correction and note: an answer can repeat a passage without citing it.
- Pseudonymous mode. The people who asked are named by their pseudonym in every text shown
  (question, answer, prompt, ratings), and the facts about them in the prompt are hidden with a
  marker: a role and a city name a person as surely as their email.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.answering.prompts import TEMPLATES
from bot.ledger.rows import FeedbackRow, TurnRow
from retrieval.records import normalise_groups, reader_groups

FACTS_HIDDEN = "[hidden: the console is pseudonymous, so facts about the person asking are not shown]"
# Name parts shorter than this are not replaced on their own ("Li" is in too many words).
MIN_NAME_PART = 3
# Enough of a passage to recognise it in a prompt whose format is not the one expected.
PASSAGE_PROBE_CHARS = 60


def restricted_marker(groups: Sequence[str]) -> str:
    """The words shown instead of what `groups` restrict."""
    that = "that group" if len(groups) == 1 else "any of those groups"
    return f"[restricted to {', '.join(groups)}: you are not in {that}]"


@dataclass(frozen=True)
class Reader:
    """The access groups a console page is read with, or everything (`see_all`)."""

    groups: frozenset[str]
    see_all: bool = False

    @classmethod
    def of(cls, own_groups: Iterable[str], *, see_all: bool) -> Reader:
        """A reader with `own_groups` plus the group every employee has."""
        return cls(frozenset(reader_groups([g.lower() for g in own_groups])), see_all)

    def hidden_groups(self, passage: Mapping[str, Any]) -> tuple[str, ...]:
        """The passage's groups when this reader may not read it, else ()."""
        if self.see_all:
            return ()
        groups = normalise_groups(passage.get("groups"))
        return () if self.groups.intersection(groups) else groups

    def restricted(self, retrieved: Sequence[Mapping[str, Any]] | None) -> tuple[str, ...]:
        """Every group that keeps one of these passages from this reader (sorted; () = none)."""
        return tuple(sorted({g for p in retrieved or [] for g in self.hidden_groups(p)}))


@dataclass(frozen=True)
class Person:
    """Someone whose name and email pseudonymous pages replace, and their stand-in."""

    key: str
    names: tuple[str, ...]
    stand_in: str


def _identifying(person: Person) -> set[str]:
    """The strings that name `person`: full names, emails, and the parts of each."""
    found = {person.key} if len(person.key) >= MIN_NAME_PART else set()
    for value in (person.key, *person.names):
        value = value.strip()
        if not value:
            continue
        found.add(value)
        local = value.split("@", 1)[0] if "@" in value else value
        found.add(local)
        found.update(p for p in re.split(r"[\s._-]+", local) if len(p) >= MIN_NAME_PART)
    return {f for f in found if f}


class Pseudonyms:
    """Replaces the names and emails of the given people in text by their stand-ins."""

    def __init__(self, people: Iterable[Person]) -> None:
        self._stand_in: dict[str, str] = {}
        for person in people:
            for token in _identifying(person):
                self._stand_in.setdefault(token.lower(), person.stand_in)
        # Longest first, so an email wins over the name part it starts with.
        ordered = sorted(self._stand_in, key=len, reverse=True)
        self._pattern = (
            re.compile(
                r"(?<![\w.@-])(" + "|".join(re.escape(t) for t in ordered) + r")(?![\w@-])",
                re.IGNORECASE,
            )
            if ordered
            else None
        )

    def __call__(self, text: str | None) -> str | None:
        if not text or self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._stand_in[m.group(1).lower()], text)


def _hide_facts(content: str, facts: Sequence[str]) -> str:
    """The prompt text with the "About the person asking" line (and any fact) replaced."""
    intros = {t.user_fact_intro for t in TEMPLATES.values()}
    lines = []
    for line in content.split("\n"):
        intro = next((i for i in intros if line.startswith(i)), None)
        lines.append(intro + FACTS_HIDDEN if intro else line)
    content = "\n".join(lines)
    for fact in facts:
        if fact:
            content = content.replace(fact, FACTS_HIDDEN)
    return content


def _probe(passage: Mapping[str, Any]) -> str:
    return " ".join(str(passage.get("text") or "").split())[:PASSAGE_PROBE_CHARS]


def redact_prompt(
    prompt: Sequence[Mapping[str, Any]] | None,
    retrieved: Sequence[Mapping[str, Any]] | None,
    reader: Reader,
    *,
    facts: Sequence[str] = (),
    pseudonyms: Pseudonyms | None = None,
) -> list[dict[str, Any]]:
    """The prompt as this reader may see it. A hidden passage's numbered line becomes the
    marker; a message that still holds a hidden passage's text after that (a prompt in an
    unexpected format) is replaced whole."""
    hidden = {n: reader.hidden_groups(p) for n, p in enumerate(retrieved or [], start=1)}
    hidden = {n: groups for n, groups in hidden.items() if groups}
    probes = [probe for n in hidden if (probe := _probe((retrieved or [])[n - 1]))]
    shown = []
    for message in prompt or []:
        content = str(message.get("content") or "")
        if hidden:
            lines = []
            for line in content.split("\n"):
                number = re.match(r"\[(\d+)\] ", line)
                groups = hidden.get(int(number.group(1))) if number else None
                lines.append(f"[{number.group(1)}] {restricted_marker(groups)}" if number and groups else line)
            content = "\n".join(lines)
            flat = " ".join(content.split())
            if any(probe in flat for probe in probes):
                content = restricted_marker(sorted({g for gs in hidden.values() for g in gs}))
        if pseudonyms is not None:
            content = pseudonyms(_hide_facts(content, facts)) or ""
        shown.append({**message, "content": content})
    return shown


def redact_passages(
    retrieved: Sequence[Mapping[str, Any]] | None, cited: Sequence[str] | None, reader: Reader
) -> list[dict[str, Any]]:
    """The retrieved passages, each marked `cited`; a hidden one keeps only its groups and
    score (its title, document id and url say what it is about)."""
    shown = []
    for passage in retrieved or []:
        is_cited = passage.get("chunk_id") in (cited or [])
        groups = reader.hidden_groups(passage)
        if groups:
            shown.append(
                {
                    "restricted": restricted_marker(groups),
                    "groups": list(groups),
                    "score": passage.get("score"),
                    "cited": is_cited,
                }
            )
        else:
            shown.append({**passage, "cited": is_cited})
    return shown


@dataclass
class ShownRating:
    """A rating as the viewer may see it."""

    created_at: datetime
    rater_key: str
    rater_role: str
    platform: str
    thumb: int | None
    score: int | None
    verdict: str | None
    note: str | None
    correction: str | None


@dataclass(frozen=True)
class ShownSentence:
    """One sentence of the answer as checked against the passages (bot/answering/grounding.py),
    as the viewer may see it. `passage` is the 1-based number of the passage that supports it
    best, 0 for the asker's own directory facts, None when it makes no claim."""

    sentence: str
    supported: bool
    claims: bool
    score: float | None
    passage: int | None
    evidence: str


@dataclass
class ShownTurn:
    """A turn as one viewer may see it: the fields the console's pages show, redacted."""

    id: str
    reference: str
    created_at: datetime
    platform: str
    channel: str
    private: bool
    status: str
    user_key: str
    user_name: str
    question: str
    answer: str | None
    error: str | None
    confidence: float | None
    prompt_version: str
    model: str
    adapter_version: str
    kb_version: int
    latency_ms: dict[str, Any]
    cache_hit: bool
    reviewed: bool
    risk: int
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    prompt: list[dict[str, Any]] = field(default_factory=list)
    strategy: str = ""
    support: list[ShownSentence] = field(default_factory=list)
    unsupported: int = 0
    restricted: tuple[str, ...] = ()
    facts_hidden: bool = False

    @property
    def marker(self) -> str:
        return restricted_marker(self.restricted) if self.restricted else ""


class Lens:
    """One viewer's way of reading turns, ratings and exported records."""

    def __init__(self, reader: Reader, pseudonyms: Pseudonyms | None = None) -> None:
        self.reader = reader
        self.pseudonyms = pseudonyms

    def text(self, value: str | None) -> str | None:
        return self.pseudonyms(value) if self.pseudonyms is not None else value

    def _hidden_or(self, restricted: tuple[str, ...], value: str | None) -> str | None:
        """The marker for text a restricted context may have shaped; else the text."""
        if restricted and value:
            return restricted_marker(restricted)
        return self.text(value)

    def support(self, restricted: tuple[str, ...], support: Sequence[Mapping[str, Any]] | None) -> list[ShownSentence]:
        """The answer's sentence check as this viewer may see it: each sentence and its evidence
        hidden with the answer when a restricted passage shaped it (the sentences are the answer,
        the evidence is the passage), and in pseudonymous mode evidence from the asker's own
        facts hidden as in the prompt."""
        shown = []
        for item in support or []:
            passage = item.get("passage")
            number = passage if isinstance(passage, int) and not isinstance(passage, bool) else None
            evidence = str(item.get("evidence") or "")
            if number == 0 and self.pseudonyms is not None and evidence:
                evidence = FACTS_HIDDEN
            else:
                evidence = self._hidden_or(restricted, evidence) or ""
            score = item.get("score")
            shown.append(
                ShownSentence(
                    sentence=self._hidden_or(restricted, str(item.get("sentence") or "")) or "",
                    supported=bool(item.get("supported")),
                    claims=bool(item.get("claims", True)),
                    score=float(score) if isinstance(score, int | float) else None,
                    passage=number,
                    evidence=evidence,
                )
            )
        return shown

    def turn(self, turn: TurnRow, *, brief: bool = False) -> ShownTurn:
        """The turn as this viewer may see it; `brief` (a queue row) leaves out the passages,
        the prompt and the sentence check, which such a page does not show."""
        restricted = self.reader.restricted(turn.retrieved)
        return ShownTurn(
            id=turn.id,
            reference=turn.reference,
            created_at=turn.created_at,
            platform=turn.platform,
            channel=turn.channel,
            private=turn.private,
            status=turn.status,
            user_key=turn.user_key,
            user_name=turn.user_name,
            question=self.text(turn.question) or "",
            answer=self._hidden_or(restricted, turn.answer),
            error=self.text(turn.error),
            confidence=turn.confidence,
            prompt_version=turn.prompt_version,
            model=turn.model,
            adapter_version=turn.adapter_version,
            kb_version=turn.kb_version,
            latency_ms=turn.latency_ms or {},
            cache_hit=turn.cache_hit,
            reviewed=turn.reviewed,
            risk=turn.risk,
            retrieved=[] if brief else redact_passages(turn.retrieved, turn.cited, self.reader),
            prompt=[]
            if brief
            else redact_prompt(
                turn.prompt,
                turn.retrieved,
                self.reader,
                facts=turn.user_facts or [],
                pseudonyms=self.pseudonyms,
            ),
            strategy=turn.strategy or "",
            support=[] if brief else self.support(restricted, turn.support),
            unsupported=turn.unsupported or 0,
            restricted=restricted,
            facts_hidden=self.pseudonyms is not None,
        )

    def ratings(self, shown: ShownTurn, ratings: Sequence[FeedbackRow]) -> list[ShownRating]:
        return [
            ShownRating(
                created_at=r.created_at,
                rater_key=r.rater_key,
                rater_role=r.rater_role,
                platform=r.platform,
                thumb=r.thumb,
                score=r.score,
                verdict=r.verdict,
                note=self._hidden_or(shown.restricted, r.note),
                correction=self._hidden_or(shown.restricted, r.correction),
            )
            for r in ratings
        ]

    def record(self, record: dict[str, Any], facts: Sequence[str] = ()) -> dict[str, Any]:
        """An exported rated turn (bot.feedback.export) as this viewer may take it away; a record with
        anything withheld says which groups in `redacted`."""
        restricted = self.reader.restricted(record.get("retrieved"))
        out = dict(record)
        out["question"] = self.text(record.get("question"))
        for key in ("answer", "correction"):
            out[key] = self._hidden_or(restricted, record.get(key))
        out["notes"] = [self._hidden_or(restricted, n) for n in record.get("notes") or []]
        out["prompt"] = redact_prompt(
            record.get("prompt"),
            record.get("retrieved"),
            self.reader,
            facts=facts,
            pseudonyms=self.pseudonyms,
        )
        out["retrieved"] = [
            {k: v for k, v in p.items() if k != "cited"}
            for p in redact_passages(record.get("retrieved"), [], self.reader)
        ]
        # A chunk id names its document ("hr/salary-bands….md#0").
        hidden = {str(p.get("chunk_id")): self.reader.hidden_groups(p) for p in record.get("retrieved") or []}
        out["cited"] = [restricted_marker(hidden[c]) if hidden.get(c) else c for c in record.get("cited") or []]
        out["redacted"] = list(restricted)
        return out


def queue_match(shown: ShownTurn, text: str, question: str) -> bool:
    """Whether a searched-for row may stay in a viewer's queue: a restricted turn matches on its
    question only, so a search cannot probe the hidden answer for a word."""
    return not (text and shown.restricted) or text.lower() in question.lower()
