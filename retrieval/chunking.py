"""Splitting documents into passages by structure: headings first, then whole sentences, with
tables split only between rows.

`langchain-text-splitters` finds the heading sections. Inside a section the text is cut into
units that must not be broken (a sentence, a list item, a table row, a line of code), and the
units are packed into passages of at most `size` characters, the last ones repeated at the
start of the next passage as overlap. So a passage never ends in the middle of a sentence (the
answer a reader needs is rarely half in one passage and half in the next), a table that fits in
one passage is never split, and every piece of a split table starts with the table's header
rows, while a row too long for one passage keeps its row label on every piece: each piece still
says what its columns and its row are. Only a single sentence longer than a passage is cut, at
words. Every chunk keeps what a citation needs (document id, title, heading path, url, access
groups).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from retrieval.records import Chunk, normalise_groups

HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")
FENCE = re.compile(r"^\s*(```|~~~)")
#: A line that starts a unit of its own (a list item or a quote), whatever came before it.
LIST_ITEM = re.compile(r"^\s*([*+\-•]|\d{1,3}[.)]|>)\s")
#: Where one sentence ends and the next begins: end punctuation (maybe closed by a quote or a
#: bracket), then whitespace. The whitespace stays with the sentence before it.
SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
#: A blank line: a paragraph break always ends a unit.
PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk size and overlap in characters (MiniLM reads about 1,000 before truncating)."""

    size: int = 800
    overlap: int = 100

    def fingerprint(self) -> str:
        # "sentences-2": passages packed from whole sentences, table rows and code blocks, so stores chunked
        # the older way (cut at any line) re-chunk on the next ingest.
        return f"chunk={self.size}/{self.overlap}/sentences-2"


@dataclass
class Document:
    """A loaded source file: text plus the metadata every chunk inherits.

    `kind` is "markdown" (split by headings), "text" (by size only) or "pages" (a PDF: one
    section per page, cited as "Page N").
    """

    doc_id: str
    title: str
    text: str
    kind: str = "markdown"
    url: str = ""
    groups: tuple[str, ...] = ()
    pages: list[str] = field(default_factory=list)
    source: str = ""
    content_hash: str = ""

    def __post_init__(self) -> None:
        self.groups = normalise_groups(self.groups)


@dataclass(frozen=True)
class _Unit:
    """A piece of text the packer never breaks. `table` numbers the table a unit belongs to
    (0: none), `header` marks that table's header (first row and rule), and `repeat` is the
    header a passage starting inside the table begins with."""

    text: str
    table: int = 0
    header: bool = False
    repeat: str = ""


def _sections(doc: Document) -> list[tuple[str, str]]:
    """(heading path, text) pairs in reading order."""
    if doc.kind == "pages":
        return [(f"Page {i}", page) for i, page in enumerate(doc.pages, start=1)]
    if doc.kind == "text":
        return [("", doc.text)]
    splitter = MarkdownHeaderTextSplitter(headers_to_split_on=HEADERS, strip_headers=True)
    sections = []
    for part in splitter.split_text(doc.text):
        names = [part.metadata[key] for _, key in HEADERS if part.metadata.get(key)]
        if names and names[0].strip().lower() == doc.title.strip().lower():
            names = names[1:]  # the H1 usually repeats the title
        sections.append((" > ".join(names), part.page_content))
    return sections


def _is_table_header(lines: list[str], i: int) -> bool:
    return i + 1 < len(lines) and bool(TABLE_ROW.match(lines[i])) and bool(TABLE_RULE.match(lines[i + 1]))


def _words(text: str, size: int) -> list[str]:
    """A sentence longer than a passage, cut at words (the only cut inside a sentence)."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=size, chunk_overlap=0, separators=["\n", " ", ""], strip_whitespace=False
    )
    return splitter.split_text(text)


def _prose_units(text: str, size: int) -> list[_Unit]:
    """Sentences, list items and paragraphs of running text, each kept with the whitespace
    after it so that joining units gives the text back."""
    pieces: list[str] = []
    for paragraph in _split_keep(text, PARAGRAPH):
        lines = paragraph.splitlines(keepends=True)
        # A list item starts a new unit even when the line before it has no full stop.
        blocks: list[str] = []
        for line in lines:
            if blocks and not LIST_ITEM.match(line):
                blocks[-1] += line
            else:
                blocks.append(line)
        for block in blocks:
            pieces.extend(_split_keep(block, SENTENCE_END))
    units: list[_Unit] = []
    for piece in pieces:
        units.extend(_Unit(part) for part in (_words(piece, size) if len(piece) > size else [piece]))
    return units


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    """`text` cut after every match of `pattern`, the match kept at the end of its piece."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.end() > start:
            pieces.append(text[start : match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in pieces if p]


def _row_pieces(row: str, room: int) -> list[str]:
    """A table row longer than `room`, cut between cells; every piece after the first starts
    with the row's label (its first cell), so a reader knows which row the values belong to."""
    cells = row.rstrip("\n").strip().strip("|").split("|")
    label = f"|{cells[0]}|"
    pieces, current = [], label
    for cell in cells[1:]:
        part = f"{cell}|"
        if len(current) + len(part) > room and current != label:
            pieces.append(current + "\n")
            current = label
        current += part
    pieces.append(current + "\n")
    return [p for piece in pieces for p in (_words(piece, room) if len(piece) > room else [piece])]


def _units(text: str, size: int) -> list[_Unit]:
    """The unbreakable units of one section, in order."""
    lines = text.splitlines(keepends=True)
    units: list[_Unit] = []
    prose: list[str] = []
    tables = 0
    i = 0
    while i < len(lines):
        if _is_table_header(lines, i) or FENCE.match(lines[i]):
            units.extend(_prose_units("".join(prose), size))
            prose = []
        if _is_table_header(lines, i):
            tables += 1
            header = lines[i] + (lines[i + 1] if lines[i + 1].endswith("\n") else lines[i + 1] + "\n")
            repeat = header if len(header) <= size // 2 else ""  # a giant header cannot repeat
            units.append(_Unit(header, table=tables, header=True, repeat=repeat))
            i += 2
            room = size - len(repeat)
            while i < len(lines) and TABLE_ROW.match(lines[i]):
                row = lines[i] if lines[i].endswith("\n") else lines[i] + "\n"
                for piece in [row] if len(row) <= room else _row_pieces(row, room):
                    units.append(_Unit(piece, table=tables, repeat=repeat))
                i += 1
        elif FENCE.match(lines[i]):
            # Code is kept line by line (a full stop inside code ends no sentence) and packed like
            # a table: whole when it fits, else every later piece starts with the opening fence,
            # and no code line is carried into the next passage as overlap, so a passage never
            # starts with a stray fence that turns the prose after it into code.
            tables += 1
            end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), len(lines) - 1)
            fence = lines[i] if lines[i].endswith("\n") else lines[i] + "\n"
            fence = fence if len(fence) <= size // 2 else ""
            units.append(_Unit(fence or lines[i], table=tables, header=True, repeat=fence))
            for line in lines[i + 1 : end + 1]:
                line = line if line.endswith("\n") else line + "\n"
                for part in _words(line, size - len(fence)) if len(line) > size - len(fence) else [line]:
                    units.append(_Unit(part, table=tables, repeat=fence))
            i = end + 1
        else:
            prose.append(lines[i])
            i += 1
    units.extend(_prose_units("".join(prose), size))
    return units


def _length(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units)


def _table_length(units: list[_Unit], start: int) -> int:
    """Characters of the whole table whose header is `units[start]`."""
    end = start + 1
    while end < len(units) and units[end].table == units[start].table:
        end += 1
    return _length(units[start:end])


def _pack(units: list[_Unit], size: int, overlap: int) -> list[str]:
    """Greedy packing of units into passages of at most `size` characters. The sentences that
    end a passage (up to `overlap` characters) start the next one too; a passage that starts
    inside a table starts with that table's header instead, and a table that fits in a passage
    of its own is moved whole into the next passage rather than split."""
    passages: list[str] = []
    current: list[_Unit] = []
    for index, unit in enumerate(units):
        # What must fit next to the passage so far: the unit, or its whole table if that fits.
        whole = _table_length(units, index) if unit.header else 0
        need = whole if 0 < whole <= size else len(unit.text)
        if current and _length(current) + need > size:
            carried: list[_Unit] = []
            while current and current[-1].header:  # a table header never ends a passage
                carried.insert(0, current.pop())
            if current:
                passages.append("".join(u.text for u in current))
            kept: list[_Unit] = []
            for previous in reversed(current):
                if previous.table or _length(kept) + len(previous.text) > overlap:
                    break
                kept.insert(0, previous)
            current = kept + carried
            if unit.table and not unit.header and unit.repeat and not carried:
                current.append(_Unit(unit.repeat, table=unit.table, header=True))
            while current and not current[0].header and _length(current) + need > size:
                current.pop(0)
        current.append(unit)
    if current:
        passages.append("".join(u.text for u in current))
    return passages


def chunk_document(doc: Document, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Chunks of one document, positions counting from 0 in reading order."""
    config = config or ChunkingConfig()
    chunks: list[Chunk] = []
    for heading, text in _sections(doc):
        if not text.strip():
            continue
        for piece in _pack(_units(text, config.size), config.size, config.overlap):
            if not piece.strip():
                continue
            chunks.append(
                Chunk(
                    id=f"{doc.doc_id}#{len(chunks)}",
                    doc_id=doc.doc_id,
                    title=doc.title,
                    heading=heading,
                    url=doc.url,
                    groups=doc.groups,
                    text=piece.strip(),
                    position=len(chunks),
                )
            )
    return chunks
