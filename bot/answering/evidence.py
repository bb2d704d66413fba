"""Passages cut into the pieces an answer can rest on: sentences, list items and table rows.

Both answer strategies work on these pieces. `quote` builds the answer from them; `generate`
checks every sentence the model wrote against them (bot/answering/grounding.py). A table row
is one piece rendered with its column headers ("Annual leave (working days): 25"), so the row
that applies to the asker can be chosen whole and still says what its numbers mean.

The word matching is Snowball-stemmed ("renewing" matches "renewal"'s stem "renew"), which
`snowballstemmer` does; sentence vectors come from the same embedder as the search.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import snowballstemmer

from bot.answering.prompts import INJECTION_PATTERNS
from retrieval.chunking import FENCE, TABLE_ROW, TABLE_RULE  # passages are read as they were cut
from retrieval.records import Hit

PieceKind = Literal["sentence", "item", "list", "row", "fact", "code"]

LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+")
#: A list item that starts with a bold label ending in a colon: "**macOS:** …".
ITEM_LABEL = re.compile(r"^\s*(?:\*\*|__)([^*_\n]{1,60}?:?)(?:\*\*|__):?\s")
# A sentence ends at . ! ? followed by space and something that starts a sentence; "e.g. the"
# and "v2.1" stay whole because the next character is lower case or not a space.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
# "v2.1" and "don't" stay one word; "carry-over" is two, so it matches "carried over".
WORD = re.compile(r"[^\W_]+(?:[.'’][^\W_]+)*", re.UNICODE)
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")

#: Words that carry no topic: function words and the words every question is made of.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves get got gets please tell know need want way thing things one much many
    let lets us may might must shall use using used""".split()
)

_STEMMER = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return str(_STEMMER.stemWord(word))


def content_terms(text: str) -> list[str]:
    """The stemmed words of `text` that say what it is about, in order (numbers kept whole)."""
    terms = []
    for word in WORD.findall(text.lower()):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        terms.append(word if any(c.isdigit() for c in word) else _stem(word))
    return terms


def held_terms(asked: Iterable[str], seen: Collection[str]) -> set[str]:
    """The `asked` terms that `seen` holds, counting a word's derivations: Snowball leaves
    "lead" and "leader", "mile" and "mileage" as different stems, and a question about who
    leads a department is answered by the row whose column says "Leader". Stems of four or more
    letters match when one is the other plus a derivational suffix Snowball keeps (DERIVED:
    "leader", "mileag(e)"), not any letters ("port" is not "portal", "plan" not "planet");
    numbers only match exactly."""
    held = set()
    for term in asked:
        if term in seen:
            held.add(term)
        elif len(term) >= 4 and term.isalpha() and any(_derived(term, other) for other in seen):
            held.add(term)
    return held


DERIVED = ("er", "or", "ag", "e")  # what Snowball leaves of -er, -or, -age, and a final e


def _derived(a: str, b: str) -> bool:
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short) and long[len(short) :] in DERIVED


def numbers_in(text: str) -> set[str]:
    """Numbers as written ("25", "30", "4700", "15:00"), to check an answer invents none."""
    return {n.strip(".,:") for n in NUMBER.findall(text)}


def plain(text: str) -> str:
    """Markdown emphasis, code marks and link targets removed, spacing made single."""
    return " ".join(EMPHASIS.sub("", LINK.sub(r"\1", text)).split())


@dataclass(frozen=True)
class Piece:
    """One thing a passage says. `passage` numbers from 1 in the order the passages were
    retrieved (0 for the asker's own facts); `table` groups the rows of one table so the row that
    applies to the asker can be chosen among its siblings; `label` is a row's first cell. A list
    of two or more items is a piece of its own too: "how do I" is answered by the steps."""

    passage: int
    text: str
    kind: PieceKind
    context: str = ""
    table: int = -1
    label: str = ""
    items: tuple[str, ...] = ()  # a list's items or a code block's lines, in order
    heading: str = ""  # the section's own heading, without the document title
    column: str = ""  # a row's first column header ("Country"): what its label is

    @property
    def own_text(self) -> str:
        """The piece with its own heading but not the document's title: a title that lists every
        platform ("Mac, Windows, Linux") says nothing about which one a sentence is for."""
        return f"{self.heading}: {self.text}" if self.heading else self.text

    @property
    def embed_text(self) -> str:
        """What the piece is embedded as: its heading in front, since "25" alone means nothing."""
        return f"{self.context}: {self.text}" if self.context else self.text


def _cells(line: str) -> list[str]:
    return [plain(c) for c in line.strip().strip("|").split("|")]


def _render_row(header: list[str], cells: list[str]) -> tuple[str, str]:
    """A table row as one readable sentence, and its label (first cell)."""
    label = cells[0] if cells else ""
    named = []
    for name, value in zip(header[1:], cells[1:], strict=False):
        if value:
            named.append(f"{name}: {value}" if name else value)
    extra = cells[len(header) :] if len(cells) > len(header) else []
    named.extend(v for v in extra if v)
    if not named:
        return label, label
    lead = f"{header[0]}: {label}" if header and header[0] and label else label
    return f"{lead} — {'; '.join(named)}", label


def split_sentences(text: str) -> list[str]:
    """Sentences of a prose paragraph."""
    return [s.strip() for s in SENTENCE_BREAK.split(text) if s.strip()]


def passage_pieces(passage: int, text: str, context: str = "", table_base: int = 0, heading: str = "") -> list[Piece]:
    """The pieces of one passage, in reading order."""
    pieces: list[Piece] = []
    lines = text.splitlines()
    header: list[str] | None = None
    table = table_base - 1
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            for sentence in split_sentences(plain(" ".join(paragraph))):
                if len(content_terms(sentence)) >= 1:
                    pieces.append(Piece(passage, sentence, "sentence", context, heading=heading))
            paragraph.clear()

    run: list[str] = []
    lists = 0

    def end_list() -> None:
        if len(run) >= 2:
            pieces.append(Piece(passage, " ".join(run), "list", context, items=tuple(run), heading=heading))
        run.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not LIST_ITEM.match(line) and line.strip():
            end_list()
        if TABLE_ROW.match(line):
            flush()
            if i + 1 < len(lines) and TABLE_RULE.match(lines[i + 1]):
                header, table = _cells(line), table + 1
                i += 2
                continue
            if header is None:  # a table piece without its header: its first row stands in
                header, table = _cells(line), table + 1
                i += 1
                continue
            rendered, label = _render_row(header, _cells(line))
            if rendered:
                pieces.append(
                    Piece(
                        passage, rendered, "row", context, table=table, label=label, heading=heading, column=header[0]
                    )
                )
            i += 1
            continue
        header = None
        if FENCE.match(line):
            # A code block is one piece, quoted as it is: its full stops end no sentence, and
            # "how do I install it on Linux?" is answered by the commands, not by the prose.
            flush()
            end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), len(lines))
            code = [c.rstrip() for c in lines[i + 1 : end] if c.strip()]
            if code:
                pieces.append(Piece(passage, "\n".join(code), "code", context, items=tuple(code), heading=heading))
            i = end + 1
            continue
        if LIST_ITEM.match(line):
            flush()
            item = plain(LIST_ITEM.sub("", line, count=1))
            if not run:
                lists += 1
            run.append(item)
            # "**Windows (Dell Latitude):** …", "**macOS:** …": items led by a label are
            # alternatives like a table's rows, so the one naming the asker's system can win.
            labelled = ITEM_LABEL.match(LIST_ITEM.sub("", line, count=1))
            label = plain(labelled.group(1)).rstrip(":") if labelled else ""
            group = table_base + 500 + lists if label else -1
            # A long item is several sentences; each can be chosen (or found unsupported) alone.
            for sentence in split_sentences(item) if len(item) > 300 else [item]:
                if content_terms(sentence):
                    pieces.append(Piece(passage, sentence, "item", context, table=group, label=label, heading=heading))
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
        i += 1
    flush()
    end_list()
    return pieces


def hit_context(hit: Hit) -> str:
    return " > ".join(p for p in (hit.chunk.title, hit.chunk.heading) if p)


def pieces_of(hits: Sequence[Hit]) -> list[Piece]:
    """Every piece of the retrieved passages; passage numbers follow the hits' order."""
    pieces: list[Piece] = []
    for number, hit in enumerate(hits, start=1):
        # Lines that try to instruct a model are not knowledge either: never quoted, never evidence.
        text = "\n".join(line for line in hit.chunk.text.splitlines() if not INJECTION_PATTERNS.search(line))
        found = passage_pieces(number, text, hit_context(hit), table_base=number * 1000, heading=hit.chunk.heading)
        # ...and once more on the pieces as quoted: a phrase wrapped over two lines, or broken by
        # link markup or double spaces, is whole only after the piece is joined and cleaned.
        pieces.extend(p for p in found if not INJECTION_PATTERNS.search(p.text))
    return pieces


def fact_pieces(user_facts: Sequence[str]) -> list[Piece]:
    """The asker's own facts, as pieces an answer may rest on (passage 0: never cited)."""
    return [Piece(0, fact, "fact") for fact in user_facts if fact.strip()]
