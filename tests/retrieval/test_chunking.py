"""Chunking by structure keeps what a citation needs."""

from __future__ import annotations

from retrieval.chunking import ChunkingConfig, Document, chunk_document


def test_headings_become_the_heading_path() -> None:
    doc = Document(
        "it/vpn.md",
        "VPN",
        "# VPN\n\n## Reset\n\n### From home\n\nUse Northwind ID.\n\n## Setup\n\nInstall NorthGate.",
        url="https://intranet.example/vpn",
        groups=("it",),
    )
    chunks = chunk_document(doc)
    assert [c.heading for c in chunks] == ["Reset > From home", "Setup"]
    assert all(
        c.doc_id == "it/vpn.md" and c.url == "https://intranet.example/vpn" and c.groups == ("it",) for c in chunks
    )
    assert chunks[0].search_text.startswith("VPN > Reset > From home\n")
    assert [c.position for c in chunks] == [0, 1]


def test_long_sections_split_with_overlap_and_tables_keep_their_header() -> None:
    rows = "\n".join(f"| Model {i} | {i * 100} EUR | role {i} |" for i in range(60))
    text = f"# Laptops\n\n## Standard models\n\n| Model | Price | Role |\n|---|---|---|\n{rows}\n"
    chunks = chunk_document(Document("laptops.md", "Laptops", text), ChunkingConfig(400, 50))
    assert len(chunks) > 3
    assert all(len(c.text) <= 400 + 80 for c in chunks)
    assert all(c.text.startswith("| Model | Price | Role |") for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert all(f"| Model {i} |" in joined for i in range(60))


def test_pages_are_cited_by_number_and_public_by_default() -> None:
    doc = Document("fire.pdf", "Fire safety", "", kind="pages", pages=["Assembly point A.", "", "Wardens list."])
    chunks = chunk_document(doc)
    assert [(c.heading, c.text) for c in chunks] == [("Page 1", "Assembly point A."), ("Page 3", "Wardens list.")]
    assert chunks[0].groups == ("everyone",)
