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


MANUAL = (
    "Pair the badge reader with the meeting-room panel before the first booking of the day. When\n"
    "the panel starts, it looks for the reader on its own and shows a green dot once they talk. If\n"
    "the dot stays grey, hold the reader next to the panel and press its only button for 5 seconds.\n"
    "Panels on the older floors may show a different icon, and some lack the dot altogether. For\n"
    "floors that still use paper sign-up sheets, ask reception for this week's sheet instead. The\n"
    "reader may not work in rooms without a network socket near the door. Change the reader's\n"
    "battery when the panel warns you, and keep spare batteries in the drawer under the screen."
)


def test_passages_end_at_sentence_ends_not_at_line_wraps() -> None:
    chunks = chunk_document(Document("tv.txt", "Remote", MANUAL, kind="text"), ChunkingConfig(300, 60))
    assert len(chunks) >= 3
    assert all(len(c.text) <= 300 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)
    sentences = [s.strip() for s in " ".join(MANUAL.split()).split(". ")]
    flat = [" ".join(c.text.split()) for c in chunks]
    assert all(any(s.rstrip(".") in passage for passage in flat) for s in sentences)


def test_a_table_that_fits_a_passage_is_never_split() -> None:
    intro = "Each standard laptop model has a price and a role. " * 4
    table = "| Model | Price | Role |\n|---|---|---|\n" + "\n".join(
        f"| M{i} | {i}00 EUR | role {i} |" for i in range(8)
    )
    doc = Document("laptops.md", "Laptops", f"# Laptops\n\n{intro}\n\n{table}\n\nAsk IT for anything else.")
    chunks = chunk_document(doc, ChunkingConfig(300, 40))
    holding = [c for c in chunks if "| M0 |" in c.text]
    assert len(holding) == 1 and all(f"| M{i} |" in holding[0].text for i in range(8))
    assert holding[0].text.startswith("| Model | Price | Role |")


def test_a_row_too_long_for_a_passage_keeps_its_header_and_row_label() -> None:
    values = " | ".join(f"port {i} carries VLAN {100 + i}" for i in range(30))
    text = f"| Switch | Ports |\n|---|---|\n| core-sw-01 | {values} |\n| edge-sw-02 | port 1 carries VLAN 5 |"
    chunks = chunk_document(Document("switches.md", "Switches", text), ChunkingConfig(250, 30))
    pieces = [c.text for c in chunks if "carries VLAN 1" in c.text]
    assert len(pieces) >= 3
    assert all(p.startswith("| Switch | Ports |\n|---|---|\n| core-sw-01 |") for p in pieces)
    joined = " ".join(pieces)
    assert all(f"port {i} carries VLAN {100 + i}" in joined for i in range(30))


def test_code_lines_are_not_split_at_full_stops() -> None:
    code = "```\n" + "\n".join(f"ibmcloud is image-update img-{i}. --status deprecated" for i in range(20)) + "\n```"
    chunks = chunk_document(Document("cli.md", "CLI", f"Run these commands.\n\n{code}"), ChunkingConfig(300, 0))
    lines = [line for c in chunks for line in c.text.splitlines() if line.startswith("ibmcloud")]
    assert lines == [f"ibmcloud is image-update img-{i}. --status deprecated" for i in range(20)]


def test_a_code_block_cut_across_passages_reopens_its_fence_and_turns_no_prose_into_code() -> None:
    prose = " ".join(f"Sentence {i} explains one part of the setup." for i in range(14))
    code = "```\n" + "\n".join(f"northgate step-{i} --portal gate.example" for i in range(12)) + "\n```"
    after = "Then restart. Afterwards, check the status page."
    chunks = chunk_document(Document("vpn.md", "VPN", f"{prose}\n\n{code}\n\n{after}"), ChunkingConfig(400, 80))
    holding = [c.text for c in chunks if "northgate step-" in c.text]
    assert len(holding) >= 2
    for text in holding:  # each piece of the block opens it before its first command
        assert text.index("```") < text.index("northgate step-")
    closing = [c.text for c in chunks if "Then restart." in c.text]
    assert closing and all(not t.lstrip().startswith("```\nThen") for t in closing)
    lines = [line for text in holding for line in text.splitlines() if line.startswith("northgate")]
    assert sorted(set(lines)) == sorted(f"northgate step-{i} --portal gate.example" for i in range(12))
