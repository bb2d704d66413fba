"""Shared by the bench scripts: reading the bench-data JSONL formats, writing results, starting
`deskmate serve`, and the real orchestrator over a bench corpus."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(REPO))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gold_ids(question: dict[str, Any]) -> list[str]:
    """Gold document ids under either name the bench formats use."""
    return list(question.get("gold_doc_ids") or question.get("gold_passage_ids") or [])


def history_of(question: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h.get("speaker", "user"), h.get("text", "")) for h in question.get("history") or []]


def question_text(question: dict[str, Any]) -> str:
    """What the user typed, as the answering benches ask it (the last two user turns' text first)."""
    earlier = " ".join(t for s, t in history_of(question)[-2:] if s == "user")
    return f"{earlier} {question['question']}".strip() if earlier else question["question"]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def write_result(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """Write `bench/results/<name>.json` (or `out`) with the machine and the date."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**settings: str) -> dict[str, str]:
    """This environment without any Deskmate, Slack or Teams settings, plus `settings`: a
    benchmark's server must not pick up the shell's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESKMATE_", "SLACK_", "MICROSOFT_"))}
    return {**env, "HF_HUB_OFFLINE": "1", **settings}


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"deskmate serve exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("deskmate serve did not answer /healthz in time")


def stop_server(server: subprocess.Popen, log_path: Path | None = None) -> int:
    """Stop the server; returns how many error lines its log has (the first ones are printed)."""
    server.terminate()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    if log_path is None:
        return 0
    problems = [
        line
        for line in log_path.read_text().splitlines()
        if " ERROR " in line or "Traceback" in line or "error" in line.lower()
    ]
    if problems:
        print(f"{len(problems)} error lines in the server log, the first ones:")
        print("\n".join(problems[:15]))
    return len(problems)


async def pg_admin(dsn: str, sql: str, *, fetch: bool = False) -> list[Any]:
    """One statement on a PostgreSQL admin connection (create or drop a benchmark's database,
    read its statistics); the rows when `fetch`."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql)) if fetch else [await conn.execute(sql)]
    finally:
        await conn.close()


def add_corpus_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options `corpus_orchestrator` reads, besides `--corpus`: how the corpus is chunked and
    embedded, and how many passages and answer tokens a turn gets."""
    parser.add_argument("--passages", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--model", default="", help="embedding model")
    parser.add_argument("--chunk-size", type=int, default=800)
    parser.add_argument("--chunk-overlap", type=int, default=100)
    add_answer_arguments(parser)


def add_answer_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How the orchestrator answers (settings.answer_strategy and kin)."""
    parser.add_argument("--strategy", choices=["auto", "quote", "generate"], default="auto")
    parser.add_argument("--quote-passages", type=int, default=5)
    parser.add_argument("--answerable-min", type=float, default=0.56, help="below it: 'the documents do not say'")
    parser.add_argument(
        "--min-confidence", type=float, default=0.30, help="best-passage similarity below which nothing is read"
    )


def turn_support(turn: Any) -> dict[str, Any]:
    """What the ledger recorded about an answer's sentences: how many made a claim, how many of
    those the passages supported in what the model (or the quoting) first wrote, and in what was
    sent after unsupported sentences were removed."""
    support = list(getattr(turn, "support", None) or [])
    claims = [s for s in support if s.get("claims", True)]
    supported = sum(1 for s in claims if s.get("supported"))
    return {
        "strategy": getattr(turn, "strategy", ""),
        "claims": len(claims),
        "supported": supported,
        "unsupported": len(claims) - supported,
    }


#: Alembic's migration context is process-global: ledgers in one process migrate one at a time.
MIGRATING = asyncio.Lock()


@contextlib.asynccontextmanager
async def bench_orchestrator(
    args: argparse.Namespace,
    generator: Any,
    fill: Callable[[Any, Any], Awaitable[None]],
    *,
    use_retrieval: bool = True,
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """The real orchestrator over a fresh embedded store that `fill(store, embedder)` fills (with
    the `args.model` embedder), and a migrated SQLite ledger, both in a temporary folder, with no
    rate limit, answer cache or history: yields (orchestrator, ledger, store), closed after."""
    from bot.answering.orchestrator import Orchestrator, TurnPolicy
    from bot.ledger.ledger import Ledger
    from retrieval.backends import open_store
    from retrieval.cache import MemoryCache
    from retrieval.embeddings import Embedder
    from retrieval.search import Searcher

    cache = MemoryCache()  # the embedder's too: passages' sentences come back turn after turn, as in production
    embedder = Embedder(args.model or "", cache=cache)
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"lancedb://{tmp}/kb", dim=embedder.dim)
        await fill(store, embedder)
        ledger = Ledger(f"sqlite:///{tmp}/ledger.db", Path(tmp) / "spool.jsonl")
        async with MIGRATING:
            await ledger.migrate()
        policy = TurnPolicy(
            rate_limit_per_minute=0,
            answer_cache_ttl=0,
            history_turns=0,
            use_retrieval=use_retrieval,
            max_answer_tokens=args.max_tokens,
            context_passages=args.passages,
            answer_strategy=getattr(args, "strategy", "auto"),
            quote_passages=getattr(args, "quote_passages", 5),
            answerable_min=getattr(args, "answerable_min", 0.56),
        )
        try:
            searcher = Searcher(store, embedder, cache, min_confidence=getattr(args, "min_confidence", 0.30))
            yield Orchestrator(searcher, generator, ledger, cache, policy), ledger, store
        finally:
            await ledger.close()
            await store.close()


@contextlib.asynccontextmanager
async def corpus_orchestrator(
    args: argparse.Namespace, generator: Any, *, use_retrieval: bool = True
) -> AsyncIterator[tuple[Any, Any]]:
    """`bench_orchestrator` over `args.corpus`, ingested with `args.chunk_size` /
    `args.chunk_overlap`: yields (orchestrator, ledger)."""
    from retrieval.chunking import ChunkingConfig, Document
    from retrieval.ingest import Ingestor

    async def ingest_corpus(store: Any, embedder: Any) -> None:
        docs = [
            Document(str(d["id"]), str(d.get("title") or ""), d["text"], kind="text") for d in read_jsonl(args.corpus)
        ]
        chunking = ChunkingConfig(args.chunk_size, args.chunk_overlap)
        await Ingestor(store, embedder, chunking=chunking).ingest_documents(docs, finish=True)

    async with bench_orchestrator(args, generator, ingest_corpus, use_retrieval=use_retrieval) as (bot, ledger, _):
        yield bot, ledger
