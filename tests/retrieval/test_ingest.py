"""Ingesting folders: bad files are skipped with a reason, the rest lands, re-runs are free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfWriter

from retrieval.backends import open_store
from retrieval.chunking import ChunkingConfig
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.records import DocumentWrite

GOOD = "---\ntitle: {title}\nurl: https://intranet.example/{slug}\ngroups: {groups}\n---\n# {title}\n\n## Steps\n\n{body}\n"


def write_good(folder: Path, slug: str, body: str, groups: str = "[]") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.md"
    path.write_text(GOOD.format(title=slug.replace("-", " ").title(), slug=slug, groups=groups, body=body))
    return path


@pytest.fixture
async def ingestor(tmp_path: Path, embedder: Embedder) -> Ingestor:
    store = await open_store(f"lancedb://{tmp_path / 'store'}", dim=embedder.dim)
    yield Ingestor(store, embedder, chunking=ChunkingConfig(400, 50), max_file_bytes=10_000_000)
    await store.close()


def make_bad_folder(folder: Path) -> dict[str, str]:
    """Files that must be skipped, with a word their reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "empty.md").write_bytes(b"")
    with open(folder / "huge.txt", "wb") as f:
        f.write(b"word " * (50 * 1024 * 1024 // 5))  # 50 MB
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    with open(folder / "scan.pdf", "wb") as f:
        writer.write(f)
    (folder / "broken-front-matter.md").write_text("---\ntitle: [unclosed\ngroups: hr\n---\n# Body\ntext\n")
    (folder / "latin1.md").write_bytes("# Café menu\nPrix: 5€ — déjà vu\n".encode("cp1252"))
    (folder / "gone.md").symlink_to(folder / "does-not-exist.md")
    (folder / "fake.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    return {
        "binary.md": "binary",
        "empty.md": "empty",
        "huge.txt": "too large",
        "scan.pdf": "no text layer",
        "broken-front-matter.md": "front matter",
        "latin1.md": "not UTF-8",
        "gone.md": "cannot read",
        "fake.pdf": "unreadable PDF",
    }


async def test_bad_files_are_skipped_and_the_rest_ingested(ingestor: Ingestor, tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    expected = make_bad_folder(folder)
    write_good(folder, "vpn-reset", "Open Northwind ID and choose Reset VPN password.")
    (folder / "notes.txt").write_text("Plain text notes about the coffee machine on floor 2.")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n")
    (folder / ".hidden.md").write_text("# hidden")
    report = await ingestor.ingest_path(folder)
    failed = dict(report.failed)
    assert set(failed) == set(expected)
    for name, word in expected.items():
        assert word.lower() in failed[name].lower(), (name, failed[name])
    assert sorted(report.added) == ["notes.txt", "vpn-reset.md"]
    assert report.ignored == ["logo.png"]
    assert not report.ok
    docs = await ingestor.store.documents()
    assert set(docs) == {"notes.txt", "vpn-reset.md"}
    assert docs["vpn-reset.md"].url == "https://intranet.example/vpn-reset"


async def test_reingest_is_idempotent_and_changes_replace(ingestor: Ingestor, tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    write_good(folder, "wifi", "Join NW-Staff with your Northwind ID.")
    write_good(folder, "printers", "Add LIS-PRINT-02 from the print portal.")
    first = await ingestor.ingest_path(folder)
    assert first.ok and first.chunks_embedded >= 2
    again = await ingestor.ingest_path(folder)
    assert again.chunks_embedded == 0 and sorted(again.unchanged) == ["printers.md", "wifi.md"]
    assert again.kb_version == first.kb_version

    write_good(folder, "wifi", "The staff network was renamed to NW-Secure in May.")
    changed = await ingestor.ingest_path(folder)
    assert changed.updated == ["wifi.md"] and changed.kb_version == first.kb_version + 1
    text = " ".join(c.text for c in await ingestor.store.chunks_of("wifi.md"))
    assert "NW-Secure" in text and "NW-Staff" not in text


async def test_prune_removes_deleted_files_but_keeps_broken_ones(ingestor: Ingestor, tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    write_good(folder, "keep", "Kept document.")
    gone = write_good(folder, "gone", "This file will be deleted.")
    broken = write_good(folder, "broken", "Will be broken later.")
    await ingestor.ingest_path(folder)
    gone.unlink()
    broken.write_bytes(b"\x00\x01binary now")
    without_prune = await ingestor.ingest_path(folder)
    assert "gone.md" in await ingestor.store.documents() and not without_prune.removed
    pruned = await ingestor.ingest_path(folder, prune=True)
    assert pruned.removed == ["gone.md"]
    docs = await ingestor.store.documents()
    assert set(docs) == {"keep.md", "broken.md"}  # a broken file keeps its last good version
    assert await ingestor.store.chunks_of("gone.md") == []


async def test_a_failed_file_in_a_batch_does_not_keep_the_others_out(ingestor: Ingestor, tmp_path: Path) -> None:
    """When the batch commit fails, files are retried one by one; the bad one stays as it was."""
    folder = tmp_path / "kb"
    folder.mkdir()
    write_good(folder, "a", "Alpha document.")
    write_good(folder, "b", "Bravo document.")
    await ingestor.ingest_path(folder)
    store = ingestor.store
    old_b = await store.chunks_of("b.md")
    docs = await store.documents()
    new_a = [c.__class__(**{**c.__dict__, "text": "Alpha, revised."}) for c in await store.chunks_of("a.md")]
    good = DocumentWrite(docs["a.md"], new_a, ingestor.embedder.embed([c.search_text for c in new_a]))
    bad = DocumentWrite(docs["b.md"], old_b, np.ones((len(old_b), 7), dtype=np.float32))
    from retrieval.chunking import Document
    from retrieval.ingest import IngestReport, _Pending

    report = IngestReport()
    pending = [_Pending(Document("a.md", "A", "x"), new_a, False), _Pending(Document("b.md", "B", "x"), old_b, False)]
    await ingestor._write([good, bad], pending, report)
    assert report.updated == ["a.md"] and [s for s, _ in report.failed] == ["b.md"]
    assert (await store.chunks_of("a.md"))[0].text == "Alpha, revised."
    assert await store.chunks_of("b.md") == old_b


async def test_single_file_and_missing_path(ingestor: Ingestor, tmp_path: Path) -> None:
    path = write_good(tmp_path, "single", "Just one file.")
    report = await ingestor.ingest_path(path)
    assert report.added == ["single.md"]
    with pytest.raises(FileNotFoundError):
        await ingestor.ingest_path(tmp_path / "nope")


# --- the knowledge folder: one root for ids, nothing read from outside it ----------------------

SECRET = "DB_PASSWORD=hunter2-prod-only"


def plant_links_out(kb: Path) -> None:
    """The attacks of issue 14 item 2: links from inside the folder to secrets beside it."""
    (kb.parent / "prod.env").write_text(f"{SECRET}\nSLACK_BOT_TOKEN=xoxb-prod\n")
    private = kb.parent / "private"
    private.mkdir()
    (private / "root-passwords.md").write_text(f"# Root passwords\n\n{SECRET}\n")
    (kb.parent / "stolen.meta.yaml").write_text(f"title: {SECRET}\n")
    (kb / "it").mkdir(parents=True, exist_ok=True)
    (kb / "it" / "notes.txt").symlink_to("../../prod.env")
    (kb / "it" / "vault").symlink_to("../../private", target_is_directory=True)
    write_good(kb / "it", "badge", "Badges are collected at reception.")
    (kb / "it" / "badge.md.meta.yaml").symlink_to("../../stolen.meta.yaml")


async def test_links_out_of_the_folder_are_skipped_and_never_read(ingestor: Ingestor, tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    plant_links_out(kb)
    write_good(kb / "hr", "leave", "Annual leave is 25 days.")
    (kb / "it" / "leave-alias.md").symlink_to("../hr/leave.md")  # stays inside: fine
    report = await ingestor.ingest_path(kb)
    failed = dict(report.failed)
    assert failed == {
        "it/notes.txt": "symlink to a file outside the knowledge folder",
        "it/vault": "symlink to a folder outside the knowledge folder",
        "it/badge.md": "badge.md.meta.yaml: symlink to a file outside the knowledge folder",
    }
    assert sorted(report.added) == ["hr/leave.md", "it/leave-alias.md"]
    for doc_id in await ingestor.store.documents():
        chunks = await ingestor.store.chunks_of(doc_id)
        assert all(SECRET not in c.text and SECRET not in c.title for c in chunks), doc_id


async def test_a_document_leaked_by_an_older_ingest_is_removed(ingestor: Ingestor, tmp_path: Path) -> None:
    """A store filled before links were checked holds the secret: the next ingest takes it out,
    with or without --prune, since it never belonged there."""
    from retrieval.chunking import Document

    kb = tmp_path / "kb"
    plant_links_out(kb)
    leaked = Document("it/notes.txt", "Notes", SECRET, kind="text", source="it/notes.txt")
    await ingestor.ingest_documents([leaked], finish=True)
    report = await ingestor.ingest_path(kb)
    assert report.removed == ["it/notes.txt"]
    assert "it/notes.txt" not in await ingestor.store.documents()


def test_a_file_swapped_for_a_link_after_discovery_is_not_read(tmp_path: Path) -> None:
    """The check is on what is opened, not on what the walk saw: reading the name once it has
    become a link out of the folder fails with the same reason."""
    from retrieval.ingest import IngestError, load_file

    kb = tmp_path / "kb"
    kb.mkdir()
    notes = kb / "notes.txt"
    notes.write_text("Harmless notes.")
    assert load_file(notes, kb, max_bytes=1_000_000).text == "Harmless notes."
    (tmp_path / "prod.env").write_text(SECRET)
    notes.unlink()
    notes.symlink_to(tmp_path / "prod.env")  # the swap, between the walk and the read
    with pytest.raises(IngestError, match="symlink to a file outside the knowledge folder"):
        load_file(notes, kb, max_bytes=1_000_000)


async def test_a_subfolder_ingest_keeps_ids_and_prunes_only_inside_it(ingestor: Ingestor, kb_copy: Path) -> None:
    first = await ingestor.ingest_path(kb_copy)
    assert first.ok, first.failed
    ids = set(await ingestor.store.documents())
    assert "it/printer-setup.md" in ids and "hr/sick-leave.md" in ids

    (kb_copy / "it" / "printer-setup.md").unlink()
    pruned = await ingestor.ingest_path(kb_copy / "it", prune=True)
    assert pruned.removed == ["it/printer-setup.md"] and not pruned.added
    assert set(await ingestor.store.documents()) == ids - {"it/printer-setup.md"}

    vpn = kb_copy / "it" / "vpn-password-reset.md"
    vpn.write_text(vpn.read_text() + "\nThe portal also works from a phone.\n")
    single = await ingestor.ingest_path(vpn)
    assert single.updated == ["it/vpn-password-reset.md"] and not single.added

    again = await ingestor.ingest_path(kb_copy, prune=True)
    assert (again.added, again.updated, again.removed) == ([], [], [])
    assert len(again.unchanged) == len(ids) - 1


async def test_a_store_filled_before_roots_were_remembered_keeps_its_ids(
    ingestor: Ingestor, kb_copy: Path, tmp_path: Path
) -> None:
    """An upgraded install: documents in the store, no root remembered. Its first subfolder
    prune must not take the subfolder for the root (re-based ids, the rest pruned)."""
    from retrieval.ingest import KB_ROOT_META, OutsideKnowledgeFolder

    assert (await ingestor.ingest_path(kb_copy)).ok
    ids = set(await ingestor.store.documents())
    await ingestor.store.set_meta(KB_ROOT_META, "")  # as a store made by the previous version
    (kb_copy / "it" / "printer-setup.md").unlink()
    pruned = await ingestor.ingest_path(kb_copy / "it", prune=True)
    assert pruned.removed == ["it/printer-setup.md"] and not pruned.added
    assert set(await ingestor.store.documents()) == ids - {"it/printer-setup.md"}

    # A folder none of whose files the store knows: the operator must name the root.
    await ingestor.store.set_meta(KB_ROOT_META, "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "note.md").write_text("# Note\n\nSomething else entirely.\n")
    with pytest.raises(OutsideKnowledgeFolder, match="DESKMATE_KB_ROOT"):
        await ingestor.ingest_path(elsewhere, prune=True)
    assert set(await ingestor.store.documents()) == ids - {"it/printer-setup.md"}


async def test_a_path_outside_the_knowledge_folder_is_refused(
    ingestor: Ingestor, tmp_path: Path, embedder: Embedder
) -> None:
    from retrieval.ingest import OutsideKnowledgeFolder

    kb, elsewhere = tmp_path / "kb", tmp_path / "elsewhere"
    write_good(kb / "it", "wifi", "Join NW-Staff.")
    write_good(elsewhere, "stray", "Not part of the knowledge base.")
    await ingestor.ingest_path(kb)
    with pytest.raises(OutsideKnowledgeFolder, match=f"outside the knowledge folder {kb}"):
        await ingestor.ingest_path(elsewhere, prune=True)
    assert set(await ingestor.store.documents()) == {"it/wifi.md"}

    # The root is remembered by the store, so another process (a reopened store) agrees.
    url = f"lancedb://{tmp_path / 'store'}"
    reopened = await open_store(url, dim=embedder.dim)
    try:
        later = Ingestor(reopened, embedder, chunking=ChunkingConfig(400, 50))
        assert (await later.ingest_path(kb / "it")).unchanged == ["it/wifi.md"]
        with pytest.raises(OutsideKnowledgeFolder):
            await later.ingest_path(elsewhere)
    finally:
        await reopened.close()


async def test_a_configured_root_names_ids_from_the_first_ingest_on(ingestor: Ingestor, tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write_good(kb / "it", "wifi", "Join NW-Staff.")
    report = await ingestor.ingest_path(kb / "it", root=kb)
    assert report.added == ["it/wifi.md"]
