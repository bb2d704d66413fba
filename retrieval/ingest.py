"""Loading a knowledge folder into the store: read, chunk, embed, write.

Idempotent by content hash (an unchanged file is neither re-embedded nor rewritten), one bad
file never stops the rest, and a file's chunks change in a single commit, so a failure leaves
that file exactly as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import frontmatter
import yaml
from bs4 import BeautifulSoup
from markdownify import markdownify

from retrieval.cache import Cache
from retrieval.chunking import ChunkingConfig, Document, chunk_document
from retrieval.embeddings import Embedder
from retrieval.records import Chunk, DocumentRecord, DocumentWrite, normalise_groups
from retrieval.store import KnowledgeStore

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED = set(TEXT_SUFFIXES) | HTML_SUFFIXES | PDF_SUFFIXES
SIDECAR = ".meta.yaml"
KB_VERSION_KEY = "kb:version"

#: Called as work advances: (files done, files total, current file).
Progress = Callable[[int, int, str], None]


class IngestError(Exception):
    """A file that cannot be ingested; the message says why in one line."""


@dataclass
class IngestReport:
    """What an ingest run did, for the summary line and the exit status."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    kb_version: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added", f"{len(self.updated)} updated",
            f"{len(self.unchanged)} unchanged", f"{len(self.removed)} removed",
            f"{len(self.failed)} failed", f"{len(self.ignored)} ignored (unsupported type)",
            f"{self.chunks_embedded} chunks embedded",
        ]
        return ", ".join(parts)


# --- loading ---------------------------------------------------------------------------------

def _decode(raw: bytes, name: str) -> str:
    if b"\x00" in raw[:8192]:
        raise IngestError("binary content, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def _split_front_matter(text: str) -> tuple[dict, str]:
    try:
        post = frontmatter.loads(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IngestError(f"broken front matter: {first}") from None
    if not isinstance(post.metadata, dict):
        raise IngestError("broken front matter: expected key: value pairs")
    return dict(post.metadata), post.content


def _groups(value: object) -> tuple[str, ...]:
    if value is None:
        return normalise_groups(())
    if isinstance(value, str):
        return normalise_groups(value.replace(";", ",").split(","))
    if isinstance(value, (list, tuple)):
        return normalise_groups([str(v) for v in value])
    raise IngestError(f"broken front matter: groups must be a list, not {type(value).__name__}")


def _first_heading(markdown: str) -> str:
    for line in markdown.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize()


def _load_html(raw: str) -> tuple[dict, str]:
    soup = BeautifulSoup(raw, "html.parser")
    meta: dict = {}
    if soup.title and soup.title.string:
        meta["title"] = soup.title.string.strip()
    for tag in soup.find_all("meta"):
        name = (tag.get("name") or "").lower()
        if name.startswith("deskmate-") and tag.get("content") is not None:
            meta[name.removeprefix("deskmate-")] = tag["content"]
    canonical = soup.find("link", rel="canonical")
    if canonical and canonical.get("href") and "url" not in meta:
        meta["url"] = canonical["href"]
    for noise in soup(["script", "style", "nav", "header", "footer", "head"]):
        noise.decompose()
    body = soup.body or soup
    markdown = markdownify(str(body), heading_style="ATX", strip=["img"])
    return meta, markdown


def _load_pdf(path: Path) -> tuple[dict, list[str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # our one line says why a PDF failed
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        info = reader.metadata or {}
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise IngestError(f"unreadable PDF: {exc}") from None
    if not any(pages):
        raise IngestError("PDF has no text layer (a scan?); run OCR on it first")
    meta = {"title": str(info.get("/Title") or "").strip()} if info.get("/Title") else {}
    return meta, pages


def load_file(path: Path, root: Path, *, max_bytes: int, fingerprint: str = "") -> Document:
    """Read one file into a `Document`, or raise `IngestError` saying why not.

    Metadata comes from front matter (Markdown, text), `<meta name="deskmate-…">` tags (HTML),
    the PDF's info, and an optional `FILE.meta.yaml` beside any file (which wins).
    """
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise IngestError(f"too large ({size / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB limit)")
        if size == 0:
            raise IngestError("empty file")
        raw = path.read_bytes()
        sidecar_path = path.with_name(path.name + SIDECAR)
        sidecar_raw = sidecar_path.read_bytes() if sidecar_path.is_file() else b""
    except PermissionError:
        raise IngestError("cannot read: permission denied") from None
    except OSError as exc:
        raise IngestError(f"cannot read: {exc.strerror or exc}") from None

    pages: list[str] = []
    if suffix in PDF_SUFFIXES:
        meta, pages = _load_pdf(path)
        kind, text = "pages", "\n\n".join(pages)
    elif suffix in HTML_SUFFIXES:
        meta, text = _load_html(_decode(raw, path.name))
        kind = "markdown"
    else:
        meta, text = _split_front_matter(_decode(raw, path.name))
        kind = TEXT_SUFFIXES[suffix]
    if sidecar_raw:
        try:
            extra = yaml.safe_load(sidecar_raw.decode("utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise IngestError(f"broken {sidecar_path.name}: {str(exc).splitlines()[0]}") from None
        if not isinstance(extra, dict):
            raise IngestError(f"broken {sidecar_path.name}: expected key: value pairs")
        meta.update(extra)
    if not text.strip():
        raise IngestError("no text in the file")

    rel = path.relative_to(root).as_posix() if path != root else path.name
    digest = hashlib.sha256(raw + b"\0" + sidecar_raw + b"\0" + fingerprint.encode()).hexdigest()
    return Document(
        doc_id=str(meta.get("id") or rel),
        title=str(meta.get("title") or _first_heading(text) or _title_from_name(path)),
        text=text,
        kind=kind,
        url=str(meta.get("url") or ""),
        groups=_groups(meta.get("groups")),
        pages=pages,
        source=rel,
        content_hash=digest,
    )


def discover(path: Path) -> tuple[list[Path], list[Path]]:
    """(supported files, ignored files) under `path`, sorted; hidden files are not looked at."""
    if path.is_file():
        return ([path], []) if path.suffix.lower() in SUPPORTED else ([], [path])
    found, ignored = [], []
    for item in sorted(path.rglob("*")):
        rel_parts = item.relative_to(path).parts
        # A dangling symlink is reported (as unreadable) rather than silently passed over.
        if any(part.startswith(".") for part in rel_parts) or not (item.is_file() or item.is_symlink()):
            continue
        if item.name.endswith(SIDECAR):
            continue
        (found if item.suffix.lower() in SUPPORTED else ignored).append(item)
    return found, ignored


# --- writing ---------------------------------------------------------------------------------

@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    is_new: bool


class Ingestor:
    """Ingests documents into a store with one embedder and chunking configuration."""

    def __init__(
        self,
        store: KnowledgeStore,
        embedder: Embedder,
        *,
        cache: Cache | None = None,
        chunking: ChunkingConfig | None = None,
        max_file_bytes: int = 10_000_000,
        batch_chunks: int = 512,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.cache = cache
        self.chunking = chunking or ChunkingConfig()
        self.max_file_bytes = max_file_bytes
        self.batch_chunks = batch_chunks

    @property
    def fingerprint(self) -> str:
        """Part of every content hash: a new model or chunk size must re-embed everything."""
        return f"{self.embedder.name}|{self.chunking.fingerprint()}"

    async def ingest_path(
        self, path: Path, *, prune: bool = False, progress: Progress | None = None
    ) -> IngestReport:
        """Ingest a folder (recursively) or a single file. With `prune`, documents that are no
        longer in the folder are removed, so the store mirrors it."""
        path = path.resolve()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        root = path if path.is_dir() else path.parent
        files, ignored = discover(path)
        report = IngestReport(ignored=[p.relative_to(root).as_posix() for p in ignored])
        docs: list[Document] = []
        seen_ids: set[str] = set()
        for path_ in files:
            rel = path_.relative_to(root).as_posix()
            try:
                doc = load_file(path_, root, max_bytes=self.max_file_bytes, fingerprint=self.fingerprint)
            except IngestError as exc:
                report.failed.append((rel, str(exc)))
                log.warning("ingest.skipped file=%s reason=%s", rel, exc)
                continue
            if doc.doc_id in seen_ids:
                report.failed.append((rel, f"duplicate document id {doc.doc_id!r}"))
                continue
            seen_ids.add(doc.doc_id)
            docs.append(doc)
        await self.ingest_documents(docs, report=report, progress=progress)
        if prune and path.is_dir():
            # A document whose file is there but broken keeps its old chunks.
            failed_sources = {source for source, _ in report.failed}
            stale = sorted(
                doc_id for doc_id, record in (await self.store.documents()).items()
                if doc_id not in seen_ids and record.source not in failed_sources
            )
            if stale:
                await self.store.delete_documents(stale)
                report.removed.extend(stale)
        await self._finish(report)
        return report

    async def ingest_documents(
        self,
        docs: Sequence[Document],
        *,
        report: IngestReport | None = None,
        progress: Progress | None = None,
        finish: bool = False,
    ) -> IngestReport:
        """Ingest already-loaded documents (the benchmark feeds its corpus this way)."""
        report = report or IngestReport()
        known = await self.store.documents()
        pending: list[_Pending] = []
        for doc in docs:
            if not doc.content_hash:
                doc.content_hash = hashlib.sha256(
                    f"{doc.title}\0{doc.url}\0{doc.groups}\0{doc.text}\0{self.fingerprint}".encode()
                ).hexdigest()
            old = known.get(doc.doc_id)
            if old is not None and old.content_hash == doc.content_hash:
                report.unchanged.append(doc.doc_id)
                continue
            chunks = chunk_document(doc, self.chunking)
            if not chunks:
                report.failed.append((doc.source or doc.doc_id, "no text to index after chunking"))
                continue
            pending.append(_Pending(doc, chunks, is_new=old is None))

        total, done = len(docs), len(report.unchanged)
        if progress:
            progress(done, total, "")
        for batch in _batches(pending, self.batch_chunks):
            texts = [c.search_text for p in batch for c in p.chunks]
            try:
                vectors = await asyncio.to_thread(self.embedder.embed, texts)
            except Exception as exc:  # noqa: BLE001 (a model failure must not lose the rest)
                for p in batch:
                    report.failed.append((p.doc.source or p.doc.doc_id, f"embedding failed: {exc}"))
                continue
            writes, offset = [], 0
            for p in batch:
                n = len(p.chunks)
                writes.append(DocumentWrite(_record(p.doc, n), p.chunks, vectors[offset : offset + n]))
                offset += n
            await self._write(writes, batch, report)
            done += len(batch)
            if progress:
                progress(done, total, batch[-1].doc.source or batch[-1].doc.doc_id)
        if finish:
            await self._finish(report)
        return report

    async def _write(self, writes: list[DocumentWrite], batch: list[_Pending], report: IngestReport) -> None:
        try:
            await self.store.replace_documents(writes)
            succeeded = list(zip(writes, batch, strict=True))
        except Exception as exc:  # noqa: BLE001
            # The batch commit failed as a whole; retry file by file so one bad file cannot
            # keep the others out.
            log.warning("ingest.batch_failed error=%s; retrying file by file", exc)
            succeeded = []
            for write, p in zip(writes, batch, strict=True):
                try:
                    await self.store.replace_documents([write])
                    succeeded.append((write, p))
                except Exception as one_exc:  # noqa: BLE001
                    report.failed.append((p.doc.source or p.doc.doc_id, f"store write failed: {one_exc}"))
        for write, p in succeeded:
            (report.added if p.is_new else report.updated).append(p.doc.doc_id)
            report.chunks_embedded += len(write.chunks)

    async def _finish(self, report: IngestReport) -> None:
        if report.changed:
            await self.store.optimize()
            report.kb_version = await self.store.bump_kb_version()
            if self.cache is not None:
                # Readers take the version from the cache: publishing it makes every cached
                # retrieval of the old version unreachable at once, on every replica.
                await self.cache.set(KB_VERSION_KEY, str(report.kb_version).encode(), ttl=60)
        else:
            report.kb_version = await self.store.kb_version()


def _batches(pending: Iterable[_Pending], max_chunks: int) -> Iterable[list[_Pending]]:
    """Groups of whole documents of about `max_chunks` chunks: big enough that embedding runs at
    full batch speed, small enough that a failure costs little."""
    batch: list[_Pending] = []
    size = 0
    for p in pending:
        batch.append(p)
        size += len(p.chunks)
        if size >= max_chunks:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _record(doc: Document, chunk_count: int) -> DocumentRecord:
    return DocumentRecord(
        doc_id=doc.doc_id,
        title=doc.title,
        url=doc.url,
        groups=doc.groups,
        content_hash=doc.content_hash,
        source=doc.source,
        chunk_count=chunk_count,
        ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
