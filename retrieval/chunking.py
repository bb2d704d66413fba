"""Splitting documents into passages by structure: headings first, then size with overlap.

`langchain-text-splitters` does the splitting; we keep what a citation needs on every chunk
(document id, title, heading path, url, access groups).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from retrieval.records import Chunk, normalise_groups

HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk size and overlap in characters (MiniLM reads about 1,000 before truncating)."""

    size: int = 800
    overlap: int = 100

    def fingerprint(self) -> str:
        return f"chunk={self.size}/{self.overlap}"


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


def _repeat_table_header(pieces: list[str]) -> list[str]:
    """A table split across chunks keeps its header row on every piece, so each piece still
    says what its columns mean."""
    header: list[str] | None = None
    out = []
    for piece in pieces:
        lines = piece.splitlines()
        if header and lines and TABLE_ROW.match(lines[0]) and not _is_table_header(lines, 0):
            piece = "\n".join([*header, *lines])
        for i in range(len(lines)):
            if _is_table_header(lines, i):
                header = lines[i : i + 2]
        if not (lines and TABLE_ROW.match(lines[-1])):
            header = None
        out.append(piece)
    return out


def chunk_document(doc: Document, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Chunks of one document, positions counting from 0 in reading order."""
    config = config or ChunkingConfig()
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=config.size, chunk_overlap=config.overlap, strip_whitespace=True
    )
    chunks: list[Chunk] = []
    for heading, text in _sections(doc):
        if not text.strip():
            continue
        for piece in _repeat_table_header(splitter.split_text(text)):
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
