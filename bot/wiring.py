"""Wiring: settings in, connected parts out. The CLI, the server, the worker and the benchmarks
all start here, so a backend is chosen in exactly one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from bot.answering.generation import AdapterNotServed, Generator, generator_from_settings
from bot.answering.orchestrator import Orchestrator, TurnPolicy
from bot.deskmate import Deskmate, Records, Retrieval
from bot.feedback.roles import roles_from_settings
from bot.ledger.ledger import Ledger
from bot.settings import Settings
from bot.training.jobs import InProcessRunner, JobBody, JobRunner, RedisRunner, queue_name
from bot.training.retrain import Retrainer
from finetune.registry import Registry
from retrieval.backends import open_store
from retrieval.cache import open_cache
from retrieval.chunking import ChunkingConfig
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.search import Searcher
from retrieval.store import DeferredStore, KnowledgeStore, StoreUnavailable

log = logging.getLogger(__name__)


async def open_retrieval(settings: Settings, *, embedder: Embedder | None = None, patient: bool = False) -> Retrieval:
    """Connect the store and cache the settings name, sharing one embedder. `patient` (for
    servers): a store that is not up yet is connected later instead of failing the start."""
    cache = open_cache(settings.cache_url, settings.cache_prefix)
    embedder = embedder or Embedder(settings.embedding_model, cache=cache, batch_size=settings.embedding_batch_size)
    api_key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None

    def connect() -> Awaitable[KnowledgeStore]:
        return open_store(
            settings.resolved_store_url(), dim=embedder.dim, api_key=api_key, grpc_port=settings.weaviate_grpc_port
        )

    try:
        store = await connect()
    except StoreUnavailable as exc:
        if not patient:
            raise
        log.warning("store.unavailable_at_start error=%s; not ready until it answers", exc)
        store = DeferredStore(connect, dim=embedder.dim, first_error=str(exc))
    searcher = Searcher(
        store,
        embedder,
        cache,
        alpha=settings.hybrid_alpha,
        min_confidence=settings.min_confidence,
        max_query_chars=settings.max_query_chars,
    )
    ingestor = Ingestor(
        store,
        embedder,
        cache=cache,
        chunking=ChunkingConfig(settings.chunk_size, settings.chunk_overlap),
        max_file_bytes=int(settings.max_file_mb * 1_000_000),
    )
    return Retrieval(settings, store, cache, embedder, searcher, ingestor)


async def open_ledger(settings: Settings) -> Ledger:
    """The ledger, migrated when reachable; when it is not, writes are spooled until it is."""
    ledger = Ledger(settings.resolved_ledger_url(), settings.resolved_spool_dir())
    try:
        await ledger.migrate()
    except Exception as exc:  # noqa: BLE001
        log.warning("ledger.migrate_failed error=%s; turns will be spooled until it is back", exc)
        ledger.available = False
    return ledger


async def open_records(settings: Settings) -> Records:
    return Records(await open_retrieval(settings), await open_ledger(settings))


async def open_deskmate(
    settings: Settings, *, generator: Generator | None = None, embedder: Embedder | None = None, patient: bool = False
) -> Deskmate:
    """Connect every part. The ledger is migrated when reachable; when it is not, Deskmate
    starts anyway, spools turns, and `/readyz` says so. `patient` (servers): a knowledge store
    that is not up yet is connected when it is, instead of failing the start."""
    retrieval = await open_retrieval(settings, embedder=embedder, patient=patient)
    ledger = await open_ledger(settings)
    generator = generator or generator_from_settings(settings)
    if settings.adapter:
        try:
            await generator.use_adapter(settings.adapter, settings.adapter_path)
        except AdapterNotServed as exc:
            log.error("adapter.refused name=%s reason=%s; serving the base model", settings.adapter, exc)
    orchestrator = Orchestrator(
        retrieval.searcher, generator, ledger, retrieval.cache, TurnPolicy.from_settings(settings)
    )

    async def run_job(job_id: str) -> None:
        await Retrainer(settings, ledger, retrieval, generator).run(job_id)

    return Deskmate(
        settings,
        retrieval,
        ledger,
        generator,
        orchestrator,
        roles_from_settings(settings),
        registry=Registry(settings.resolved_adapters_dir()),
        jobs=job_runner(settings, run_job),
    )


def job_runner(settings: Settings, body: JobBody) -> JobRunner:
    """Where retraining runs: this process, or the Redis queue (`job_queue`)."""
    if settings.job_queue == "redis":
        if not settings.cache_url.startswith(("redis://", "rediss://")):
            raise ValueError("DESKMATE_JOB_QUEUE=redis needs DESKMATE_CACHE_URL to be a redis:// URL")
        return RedisRunner(settings.cache_url, queue_name(settings.cache_prefix))
    if settings.job_queue != "inprocess":
        raise ValueError(f"DESKMATE_JOB_QUEUE is `inprocess` or `redis`, not {settings.job_queue!r}")
    return InProcessRunner(body)


def run_job_sync(job_id: str) -> str:
    """The RQ entry point (`deskmate worker`): open what the job needs and run it."""

    async def main() -> str:
        settings = Settings()
        records = await open_records(settings)
        try:
            job = await Retrainer(settings, records.ledger, records.retrieval).run(job_id)
            return job.status if job else "missing"
        finally:
            await records.close()

    return asyncio.run(main())
