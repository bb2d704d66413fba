"""The `quote` answer strategy: the answer is the passages' own sentences and table rows,
chosen for the question and the person asking, each cited to its passage.

A 135M model copies well and composes badly: asked how many leave days Ana gets, it wrote "The
answer is: 12" with the right table in front of it. Choosing is something we can do well
without it: every piece of the retrieved passages is scored against the question (MiniLM cosine
blended with stemmed word overlap), the row of a table that names the asker's office, country or
device wins over its siblings, and a sentence that introduces a list ("Do the following:")
brings the list. Nothing in a quoted answer is unsupported by construction, and the best
piece's score says whether the passages answer the question at all (`Composition.relevance`,
the answerability signal the orchestrator abstains on).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.answering.evidence import WORD, Piece, content_terms, held_terms, numbers_in

#: Weight of word overlap against cosine in a piece's relevance to the question.
LEXICAL_WEIGHT = 0.5
#: Another piece joins the answer when it is this close to the best one.
COMPANION_RATIO = 0.85
MAX_PIECES = 3
#: A piece that answers a part of the question no chosen piece touches ("badges *and* parking")
#: joins when it is at least this close to the best one.
COVERAGE_RATIO = 0.6
MAX_LIST_ITEMS = 6
MAX_CHARS = 700
#: How much a sibling row that does not name the asker loses against one that does.
OTHER_ROW_PENALTY = 0.25
#: What the row or section that names the asker's situation gains when the question is theirs.
ASKER_BONUS = 0.1
FIRST_PERSON = frozenset({"i", "my", "me", "mine", "i'm", "i've", "myself", "we", "our", "us"})
#: What the asker's own section gains over the document's general text: "how do I install the
#: VPN" from a Mac user is answered by the macOS steps, not by the page's introduction.
SECTION_BONUS = 0.15
#: What a list of steps gains when the question asks how to do something.
STEPS_BONUS = 0.08
HOW_TO = re.compile(
    r"^\s*(?:(?:and|so|ok|okay|then|but|also)[,\s]+)?"  # a follow-up: "And how do I … on Linux?"
    r"(?:how (?:do|can|should|would|to|does)|what (?:are the|do i do)|steps? to)\b",
    re.I,
)

#: Words of the directory's fact sentences that say nothing about the person (retrieval/users.py).
FACT_FRAME = frozenset(
    content_terms(
        "the person asking is works from in the department role is belongs to the groups uses this device which runs"
    )
)


@dataclass(frozen=True)
class Composition:
    """A quoted answer: its text with `[n]` marks, the pieces it is made of, and how well the
    best piece matches the question (0-1)."""

    text: str
    pieces: list[Piece] = field(default_factory=list)
    relevance: float = 0.0
    scores: list[float] = field(default_factory=list)


def asker_terms(user_facts: Sequence[str], user_name: str = "") -> set[str]:
    """The words that describe the asker's situation (office, country, device, department),
    from the directory's fact sentences; their name and e-mail say nothing about the answer."""
    name_terms = set(content_terms(user_name))
    terms: set[str] = set()
    for fact in user_facts:
        if "person asking is" in fact:
            name_terms |= set(content_terms(fact.split("person asking is", 1)[1].split("(")[0]))
            continue
        head, _, rest = fact.partition(":") if ":" in fact else ("", "", fact)
        words = set(content_terms(rest or head))
        terms |= words
    # Model numbers ("iPhone 14") would match any passage with that number in it.
    return {t for t in terms - FACT_FRAME - name_terms if not any(c.isdigit() for c in t)}


def relevance(question: str, question_vector: np.ndarray, pieces: Sequence[Piece], vectors: np.ndarray) -> np.ndarray:
    """How well each piece answers the question: cosine blended with the share of the
    question's words the piece (with its heading) contains."""
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    asked = set(content_terms(question))
    cosine: np.ndarray = np.clip(vectors @ question_vector, 0.0, 1.0)
    if not asked:
        return cosine
    overlap = np.array([len(asked & set(content_terms(p.embed_text))) / len(asked) for p in pieces])
    blended: np.ndarray = (1 - LEXICAL_WEIGHT) * cosine + LEXICAL_WEIGHT * overlap
    return blended


def prefer_asker_rows(pieces: Sequence[Piece], scores: np.ndarray, question: str, about_asker: set[str]) -> np.ndarray:
    """Among the rows of one table, the row the question names (a country it mentions) or else
    the row that names the asker (their office) is the one that applies; its siblings lose."""
    adjusted = scores.copy()
    if HOW_TO.match(question):
        for i, piece in enumerate(pieces):
            if piece.kind in ("list", "code"):
                adjusted[i] += STEPS_BONUS
    personal = bool(about_asker) and bool(FIRST_PERSON & set(WORD.findall(question.lower())))
    if personal:
        _prefer_asker_sections(pieces, adjusted, about_asker)
    tables: dict[int, list[int]] = {}
    for i, piece in enumerate(pieces):
        if piece.kind == "row" or (piece.kind == "item" and piece.label):
            tables.setdefault(piece.table, []).append(i)
    for rows in tables.values():
        if len(rows) < 2:
            continue
        # "in my country" names no row of a table whose first column is "Country".
        column = set(content_terms(pieces[rows[0]].column))
        label_terms = {i: set(content_terms(pieces[i].label)) - column for i in rows}
        # A word most labels share ("NG" in NG-401, NG-417, NG-503) names the table, not a row.
        shared = Counter(t for terms in label_terms.values() for t in terms)
        label_terms = {i: {t for t in terms if shared[t] * 2 <= len(rows)} for i, terms in label_terms.items()}
        named = _most_matching(rows, label_terms, named_in(question))
        bonus = 0.0
        if not named and about_asker:
            named = _most_matching(rows, label_terms, about_asker)
            if not named:  # the asker's office may sit in a cell, not the label
                named = _most_matching(rows, {i: set(content_terms(pieces[i].text)) for i in rows}, about_asker)
            bonus = ASKER_BONUS
        if named and len(named) < len(rows):
            # One named row is the answer even when its wording matches the question less than a
            # sibling's; several keep their own order, all above the rest.
            lift = max(adjusted[i] for i in rows) if len(named) == 1 else 0.0
            for i in rows:
                if i in named:
                    adjusted[i] = max(adjusted[i], lift) + bonus
                else:
                    adjusted[i] = adjusted[i] - OTHER_ROW_PENALTY
    return adjusted


def _prefer_asker_sections(pieces: Sequence[Piece], adjusted: np.ndarray, about_asker: set[str]) -> None:
    """Sections side by side under one heading ("macOS", "Windows 11", "Linux (Ubuntu)") are
    alternatives like a table's rows: when one names the asker's system or office, the pieces of
    its siblings lose (in place), and so does the text above them, under the parent heading
    itself: "what the VPN is" is no answer for the Mac user who asked how to install it."""
    by_parent: dict[str, dict[str, list[int]]] = {}
    for i, piece in enumerate(pieces):
        parent, _, last = piece.context.rpartition(" > ")
        if parent and last:
            by_parent.setdefault(parent, {}).setdefault(last, []).append(i)
    for parent, sections in by_parent.items():
        if len(sections) < 2:
            continue
        matching = _most_matching(
            list(range(len(sections))),
            {n: set(content_terms(name)) for n, name in enumerate(sections)},
            about_asker,
        )
        if not matching or len(matching) == len(sections):
            continue
        for n, members in enumerate(sections.values()):
            for i in members:
                adjusted[i] += SECTION_BONUS if n in matching else -OTHER_ROW_PENALTY
        for i, piece in enumerate(pieces):
            if piece.context == parent:
                adjusted[i] -= OTHER_ROW_PENALTY


def named_in(question: str) -> set[str]:
    """The names a question gives ("Germany", "Berlin", "MacBook"): capitalised words after
    the first. A question's common words ("in my own country") name no row: "Other countries"
    is not the asker's country."""
    words = WORD.findall(question)
    return set(content_terms(" ".join(w for w in words[1:] if w[:1].isupper())))


def _most_matching(rows: list[int], terms: dict[int, set[str]], wanted: set[str]) -> list[int]:
    """The rows sharing the most words with `wanted` (none when no row shares any): "Remote
    (Porto, Portugal)" picks the Portugal row over the Germany one that also says "remote"."""
    counts = {i: len(terms[i] & wanted) for i in rows}
    top = max(counts.values(), default=0)
    return [i for i in rows if top and counts[i] == top]


def _list_after(pieces: Sequence[Piece], index: int) -> list[int]:
    """The list items right after a piece that introduces them ("… as follows:")."""
    if not pieces[index].text.rstrip().endswith(":"):
        return []
    follow = []
    for j in range(index + 1, min(len(pieces), index + 1 + MAX_LIST_ITEMS)):
        if pieces[j].passage != pieces[index].passage or pieces[j].kind not in ("item", "row"):
            break
        follow.append(j)
    return follow


def _steps_of_section(question: str, pieces: Sequence[Piece], index: int) -> list[int]:
    """For a "how do I" question answered by a sentence, the steps (a list or a code block) of
    the same section: "Linux laptops use the command-line client." says which way, the commands
    after it say how."""
    if not HOW_TO.match(question) or pieces[index].kind != "sentence":
        return []
    for j in range(index + 1, len(pieces)):
        same = pieces[j].passage == pieces[index].passage or pieces[j].context == pieces[index].context
        if not same or pieces[j].context != pieces[index].context:
            break
        if pieces[j].kind in ("list", "code"):
            return [j] if len(pieces[j].text) <= MAX_CHARS else []
    return []


def compose(
    question: str,
    question_vector: np.ndarray,
    pieces: Sequence[Piece],
    vectors: np.ndarray,
    about_asker: set[str] | None = None,
) -> Composition:
    """The quoted answer to `question` from `pieces` (their vectors row by row)."""
    if not pieces:
        return Composition("")
    raw = relevance(question, question_vector, pieces, vectors)
    scores = prefer_asker_rows(pieces, raw, question, about_asker or set())
    order = [int(i) for i in np.argsort(-scores)]
    best = order[0]
    listed = _list_after(pieces, best)
    # A sentence that introduces its list already brings the steps: not the list piece again.
    chosen = [best, *listed, *([] if listed else _steps_of_section(question, pieces, best))]
    room = MAX_PIECES + len(chosen) - 1
    for i in order[1:]:
        if scores[i] < COMPANION_RATIO * scores[best]:
            break
        # Rows of the best row's table that score as high apply equally (every meeting room of
        # the asker's office): they may fill a list's worth of lines, other pieces only `room`.
        peer = pieces[i].kind == "row" == pieces[best].kind and pieces[i].table == pieces[best].table
        if len(chosen) >= (max(room, MAX_LIST_ITEMS) if peer and scores[i] >= scores[best] - 1e-6 else room):
            if not peer:
                break
            continue
        if i in chosen or _repeats(pieces[i], [pieces[c] for c in chosen]):
            continue
        if sum(len(pieces[c].text) for c in chosen) + len(pieces[i].text) > MAX_CHARS:
            continue
        chosen.append(i)
    _cover_the_rest(question, pieces, scores, order, chosen, demoted=set(np.flatnonzero(scores < raw - 1e-9).tolist()))
    # In reading order within a passage, passages in retrieval order: steps stay in sequence.
    chosen.sort(key=lambda i: (pieces[i].passage, i))
    kept = [pieces[i] for i in chosen]
    return Composition(render(kept), kept, float(raw[best]), [float(scores[i]) for i in chosen])


def _cover_the_rest(
    question: str,
    pieces: Sequence[Piece],
    scores: np.ndarray,
    order: list[int],
    chosen: list[int],
    demoted: set[int],
) -> None:
    """Adds (in place) the best pieces that answer what the chosen ones leave out: a question
    with two parts ("where do visitors get badges and parking spaces?") is often answered by
    two documents, and the second is rarely as close to the whole question as the first.
    `demoted` pieces (a sibling row, another system's section, the introduction above the
    asker's section) stay out: they lost to the asker's piece, so they cannot come back as the
    "rest" of the answer because they share a word with the question."""
    asked = set(content_terms(question))
    covered = set().union(*(content_terms(pieces[c].embed_text) for c in chosen))
    missing = asked - held_terms(asked, covered)
    for i in order:
        if not missing or len(chosen) >= MAX_PIECES or scores[i] < COVERAGE_RATIO * scores[order[0]]:
            break
        terms = set(content_terms(pieces[i].embed_text))
        if (
            i in chosen
            or i in demoted
            or not held_terms(missing, terms)
            or _repeats(pieces[i], [pieces[c] for c in chosen])
        ):
            continue
        if sum(len(pieces[c].text) for c in chosen) + len(pieces[i].text) > MAX_CHARS:
            continue
        chosen.append(i)
        missing -= held_terms(missing, terms)


def _repeats(piece: Piece, chosen: Sequence[Piece]) -> bool:
    """A piece that says what a chosen one already says (overlapping chunks repeat text). One
    that gives other numbers for the same thing is no repeat: it is a disagreement to show."""
    terms = set(content_terms(piece.text))
    mine = numbers_in(piece.text)
    for other in chosen:
        theirs_numbers = numbers_in(other.text)
        if mine and theirs_numbers and not (mine <= theirs_numbers or theirs_numbers <= mine):
            continue
        theirs = set(content_terms(other.text))
        shared = len(terms & theirs)
        if terms and theirs and (shared / len(terms) >= 0.8 or shared / len(theirs) >= 0.8):
            return True
    return False


def _ended(text: str) -> str:
    text = text.rstrip()
    return text if text[-1:] in ".!?:" else text + "."


def render(pieces: Sequence[Piece]) -> str:
    """Pieces as answer text: prose joined, list items and rows one per line, each cited."""
    lines: list[str] = []
    prose: list[str] = []
    for piece in pieces:
        text = piece.text.rstrip()
        if text[-1:] not in ".!?:":
            text += "."
        cited = f"{text} [{piece.passage}]" if piece.passage else text
        if piece.kind == "list":
            if prose:
                lines.append(" ".join(prose))
                prose = []
            lines.extend(f"- {_ended(item)} [{piece.passage}]" for item in piece.items)
            continue
        if piece.kind == "code":
            if prose:
                lines.append(" ".join(prose))
                prose = []
            # The citation on a line of its own: CommonMark allows nothing after a closing fence.
            lines.append(f"```\n{piece.text}\n```\n[{piece.passage}]")
            continue
        if piece.kind in ("item", "row"):
            if prose:
                lines.append(" ".join(prose))
                prose = []
            lines.append(f"- {cited}")
        else:
            prose.append(cited)
    if prose:
        lines.append(" ".join(prose))
    return "\n".join(lines)
