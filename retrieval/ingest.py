"""Loading a knowledge folder into the store: read, chunk, embed, write.

Idempotent by content hash (an unchanged file is neither re-embedded nor rewritten), one bad
file never stops the rest, and a file's chunks change in a single commit, so a failure leaves
that file exactly as it was.

Document ids are paths relative to one knowledge folder (the root), whatever part of it one
ingest is given, and nothing is read from outside that folder: a link that leaves it is
skipped like any other bad file, checked on what was actually opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
#: The store's `meta` key remembering the knowledge folder of the first ingest.
KB_ROOT_META = "kb_root"
OUTSIDE_FILE = "symlink to a file outside the knowledge folder"
OUTSIDE_FOLDER = "symlink to a folder outside the knowledge folder"

#: Called as work advances: (files done, files total, current file).
Progress = Callable[[int, int, str], None]


class IngestError(Exception):
    """A file that cannot be ingested; the message says why in one line."""


class OutsideLink(IngestError):
    """A file (or its sidecar) whose link leads out of the knowledge folder."""


class OutsideKnowledgeFolder(ValueError):
    """The path given lies outside the knowledge folder that document ids are relative to.

    Ingesting it would name its documents relative to another folder (duplicates) or read
    from where the operator never pointed; the caller says which setting moves the root."""

    def __init__(self, path: Path, root: Path, source: str) -> None:
        self.path = path
        self.root = root
        self.source = source
        super().__init__(
            f"{path} is outside the knowledge folder {root} ({source}); document ids are relative to that folder"
        )


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
            f"{len(self.added)} added",
            f"{len(self.updated)} updated",
            f"{len(self.unchanged)} unchanged",
            f"{len(self.removed)} removed",
            f"{len(self.failed)} failed",
            f"{len(self.ignored)} ignored (unsupported type)",
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
        raise IngestError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8") from None


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
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


def _load_html(raw: str) -> tuple[dict[str, Any], str]:
    soup = BeautifulSoup(raw, "html.parser")
    meta: dict[str, Any] = {}
    if soup.title and soup.title.string:
        meta["title"] = soup.title.string.strip()
    for tag in soup.find_all("meta"):
        name_attr = tag.get("name") or ""
        assert isinstance(name_attr, str)  # bs4 splits only class-like attributes (class, rel) into lists
        name = name_attr.lower()
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


def _load_pdf(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # our one line says why a PDF failed
    try:
        # The bytes already checked, not the name again: the file may have been swapped since.
        reader = PdfReader(io.BytesIO(raw))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        info: Mapping[str, object] = reader.metadata or {}
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise IngestError(f"unreadable PDF: {exc}") from None
    if not any(pages):
        raise IngestError("PDF has no text layer (a scan?); run OCR on it first")
    meta = {"title": str(info.get("/Title") or "").strip()} if info.get("/Title") else {}
    return meta, pages


def _opened_path(fd: int, path: Path, info: os.stat_result) -> Path | None:
    """Where the open file `fd` really lies. Linux names it in /proc; elsewhere the resolved
    name counts only if it is the very file that was opened (same device and inode)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    real = path.resolve()
    try:
        same = os.stat(real)
    except OSError:
        return None
    return real if (same.st_dev, same.st_ino) == (info.st_dev, info.st_ino) else None


def read_inside(path: Path, root: Path, *, max_bytes: int) -> bytes:
    """The bytes of `path`, proven to come from a regular file inside `root` (resolved).

    The proof is taken on the open descriptor, not on the name, so a file swapped for a link
    between discovery and reading is caught as well. Non-blocking open, so a FIFO planted in
    the folder is refused instead of hanging the ingest."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise IngestError("cannot read: permission denied") from None
    except OSError as exc:
        raise IngestError(f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IngestError("not a regular file")
        real = _opened_path(fd, path, info)
        if real is None or not real.is_relative_to(root):
            raise OutsideLink(OUTSIDE_FILE)
        if info.st_size > max_bytes:
            raise IngestError(_too_large(info.st_size, max_bytes))
        with os.fdopen(os.dup(fd), "rb") as file:
            raw = file.read(max_bytes + 1)
    except OSError as exc:
        raise IngestError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # it grew after fstat
        raise IngestError(_too_large(len(raw), max_bytes))
    return raw


def _too_large(size: int, max_bytes: int) -> str:
    return f"too large ({size / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB limit)"


def load_file(path: Path, root: Path, *, max_bytes: int, fingerprint: str = "") -> Document:
    """Read one file into a `Document`, or raise `IngestError` saying why not.

    Metadata comes from front matter (Markdown, text), `<meta name="deskmate-…">` tags (HTML),
    the PDF's info, and an optional `FILE.meta.yaml` beside any file (which wins). Neither the
    file nor its sidecar is read from outside `root` (resolved): `OutsideLink` says so.
    """
    suffix = path.suffix.lower()
    boundary = root.resolve()
    raw = read_inside(path, boundary, max_bytes=max_bytes)
    if not raw:
        raise IngestError("empty file")
    sidecar_path = path.with_name(path.name + SIDECAR)
    sidecar_raw = b""
    if os.path.lexists(sidecar_path):
        try:
            sidecar_raw = read_inside(sidecar_path, boundary, max_bytes=max_bytes)
        except OutsideLink as exc:
            # Failing the file, not dropping the sidecar: the sidecar may carry its groups, and
            # without them a restricted document would become public.
            raise OutsideLink(f"{sidecar_path.name}: {exc}") from None
        except IngestError as exc:
            raise IngestError(f"{sidecar_path.name}: {exc}") from None

    pages: list[str] = []
    if suffix in PDF_SUFFIXES:
        meta, pages = _load_pdf(raw)
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


@dataclass
class Found:
    """What a walk of (part of) the knowledge folder found, each list sorted."""

    files: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def discover(path: Path, root: Path | None = None) -> Found:
    """Supported files, ignored ones (unsupported type) and refused ones under `path`; hidden
    files are not looked at.

    A link whose target leaves `root` (default: `path`'s folder) is refused with the reason.
    No folder link is followed, wherever it points: `Path.rglob`'s answer to that differs
    between Python versions, and a followed link could leave the folder or loop; a folder link
    that stays inside names files that are ingested where they really are.
    """
    if root is None:
        root = path if path.is_dir() and not path.is_symlink() else path.parent
    found = Found()
    if path.is_dir() and not path.is_symlink():
        _walk(path, root.resolve(), found)
    else:
        _consider(path, root.resolve(), found)
    found.files.sort()
    found.ignored.sort()
    found.refused.sort()
    return found


def _walk(folder: Path, root: Path, found: Found) -> None:
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as exc:
        found.refused.append((folder, f"cannot read folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        item = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _walk(item, root, found)
        elif entry.is_symlink() and item.is_dir():
            if _escapes(item, root):
                found.refused.append((item, OUTSIDE_FOLDER))
            else:
                log.info("ingest.link_not_followed folder=%s", item)
        elif (entry.is_file() or entry.is_symlink()) and not entry.name.endswith(SIDECAR):
            # A dangling link is reported (as unreadable) rather than silently passed over.
            _consider(item, root, found)


def _consider(item: Path, root: Path, found: Found) -> None:
    if item.is_symlink() and _escapes(item, root):
        found.refused.append((item, OUTSIDE_FOLDER if item.is_dir() else OUTSIDE_FILE))
    elif item.suffix.lower() in SUPPORTED:
        found.files.append(item)
    else:
        found.ignored.append(item)


def _escapes(link: Path, root: Path) -> bool:
    """True when `link`, followed to the end, lands outside `root`. A loop is not judged here:
    reading it fails with its own reason."""
    try:
        return not link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _given(path: Path) -> Path:
    """The absolute path of what to ingest: a folder with its links resolved, a file with its
    folder's resolved but its own name kept, so that a file that is a link is judged by
    `discover` as one inside the folder would be."""
    if path.is_dir():
        return path.resolve()
    absolute = path.absolute()
    return absolute.parent.resolve() / absolute.name


def _under(source: str, scope: str) -> bool:
    """True when the relative path `source` is `scope` or lies in it ("" is the whole root)."""
    return not scope or source == scope or source.startswith(scope + "/")


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
        self,
        path: Path,
        *,
        prune: bool = False,
        progress: Progress | None = None,
        root: Path | None = None,
    ) -> IngestReport:
        """Ingest a folder (recursively) or a single file inside the knowledge folder.

        Document ids are paths relative to the knowledge folder: `root` when given (the
        operator's setting), else the folder the store remembers from its first ingest, else
        this path's folder, which is then remembered. So a subfolder or one file gets the ids
        the whole folder would; a path outside raises `OutsideKnowledgeFolder`. With `prune`,
        documents whose files were under `path` and are gone are removed; the rest of the
        knowledge base is not touched. A document whose file has become a link out of the
        folder is removed even without `prune`: it should never have been readable.
        """
        target = _given(path)
        if not os.path.lexists(target):
            raise FileNotFoundError(f"no such file or folder: {target}")
        kb_root = await self._knowledge_root(target, root)
        found = discover(target, kb_root)
        report = IngestReport(ignored=[_relative(p, kb_root) for p in found.ignored])
        escaped: set[str] = set()
        for item, reason in found.refused:
            rel = _relative(item, kb_root)
            report.failed.append((rel, reason))
            log.warning("ingest.skipped file=%s reason=%s", rel, reason)
            if reason in (OUTSIDE_FILE, OUTSIDE_FOLDER):
                escaped.add(rel)
        docs: list[Document] = []
        seen_ids: set[str] = set()
        for file in found.files:
            rel = _relative(file, kb_root)
            try:
                doc = load_file(file, kb_root, max_bytes=self.max_file_bytes, fingerprint=self.fingerprint)
            except IngestError as exc:
                report.failed.append((rel, str(exc)))
                log.warning("ingest.skipped file=%s reason=%s", rel, exc)
                if isinstance(exc, OutsideLink):
                    escaped.add(rel)
                continue
            if doc.doc_id in seen_ids:
                report.failed.append((rel, f"duplicate document id {doc.doc_id!r}"))
                continue
            seen_ids.add(doc.doc_id)
            docs.append(doc)
        await self.ingest_documents(docs, report=report, progress=progress)
        scope = _relative(target, kb_root) if target != kb_root else ""
        await self._remove(report, escaped, seen_ids, scope if prune and target.is_dir() else None)
        await self._finish(report)
        return report

    async def _knowledge_root(self, target: Path, configured: Path | None) -> Path:
        """The folder document ids are relative to, remembered in the store for later runs
        (and for other machines' runs, which then must name it in the setting)."""
        remembered = await self.store.meta(KB_ROOT_META)
        if configured is not None:
            root, source = configured.resolve(), "the configured knowledge folder"
        elif remembered:
            root, source = Path(remembered), "remembered from the first ingest"
        else:
            root, source = await self._first_root(target)
        if not target.is_relative_to(root):
            raise OutsideKnowledgeFolder(target, root, source)
        if remembered != str(root):
            if remembered:
                log.warning("ingest.root_changed old=%s new=%s", remembered, root)
            await self.store.set_meta(KB_ROOT_META, str(root))
        return root

    async def _first_root(self, target: Path) -> tuple[Path, str]:
        """The root when none is configured or remembered. An empty store takes the folder
        ingested; a store filled before roots were remembered takes the nearest folder at or
        above the target under which its documents' files are found, so that a subfolder
        ingest there cannot re-base ids or prune the rest. Otherwise the operator must say."""
        folder = target if target.is_dir() else target.parent
        sources = [r.source for r in (await self.store.documents()).values() if r.source]
        if not sources:
            return folder, "the first ingest"
        sample = sources[:50]
        for candidate in (folder, *folder.parents):
            if sum((candidate / s).exists() for s in sample) * 2 > len(sample):
                return candidate, "the folder the existing documents came from"
        raise OutsideKnowledgeFolder(
            target, folder, "a store whose folder is not known: set DESKMATE_KB_ROOT to the folder it was ingested from"
        )

    async def _remove(
        self, report: IngestReport, escaped: set[str], seen_ids: set[str], prune_scope: str | None
    ) -> None:
        """Delete documents of links out of the folder, and with a `prune_scope` the stale ones
        in it. A document whose file is there but broken keeps its old chunks."""
        if not escaped and prune_scope is None:
            return
        failed_sources = {source for source, _ in report.failed}

        def stale(doc_id: str, source: str) -> bool:
            return (
                prune_scope is not None
                and _under(source, prune_scope)
                and doc_id not in seen_ids
                and source not in failed_sources
            )

        doomed = sorted(
            doc_id
            for doc_id, record in (await self.store.documents()).items()
            if any(_under(record.source, link) for link in escaped) or stale(doc_id, record.source)
        )
        if doomed:
            await self.store.delete_documents(doomed)
            report.removed.extend(doomed)

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


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else path.name


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
