"""Wiring: settings in, connected parts out. The CLI, the server and the benchmarks all start
here, so a backend is chosen in exactly one place."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from bot.exposure import exposure, forwarded_middleware
from bot.generation import AdapterNotServed, Generator, open_generator
from bot.health import readiness
from bot.ledger import Ledger, TurnRow
from bot.orchestrator import Orchestrator, TurnPolicy
from bot.roles import Roles, roles_from_settings
from bot.settings import Settings
from retrieval.cache import Cache, open_cache
from retrieval.chunking import ChunkingConfig
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.search import Searcher
from retrieval.store import DeferredStore, KnowledgeStore, StoreUnavailable, open_store

log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    """The retrieval half of Deskmate, connected."""

    settings: Settings
    store: KnowledgeStore
    cache: Cache
    embedder: Embedder
    searcher: Searcher
    ingestor: Ingestor

    async def close(self) -> None:
        await self.store.close()
        await self.cache.close()


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
        store = DeferredStore(connect, dim=embedder.dim, first_error=str(exc))  # type: ignore[assignment]
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


def turn_policy(settings: Settings) -> TurnPolicy:
    return TurnPolicy(
        prompt_version=settings.prompt_version,
        context_passages=settings.context_passages,
        max_answer_tokens=settings.max_answer_tokens,
        generator_timeout=settings.generator_timeout,
        fallback_contact=settings.fallback_contact,
        rate_limit_per_minute=settings.rate_limit_per_minute,
        answer_cache_ttl=settings.answer_cache_ttl,
        history_turns=settings.history_turns,
    )


def make_generator(settings: Settings) -> Generator:
    key = settings.generator_api_key.get_secret_value() if settings.generator_api_key else None
    return open_generator(
        settings.generator_url,
        api_key=key,
        timeout=settings.generator_timeout,
        n_threads=settings.generator_threads,
        max_waiting=settings.generator_max_waiting,
    )


@dataclass
class Deskmate:
    """Everything a running Deskmate holds: retrieval, the ledger, the model, the orchestrator."""

    settings: Settings
    retrieval: Retrieval
    ledger: Ledger
    generator: Generator
    orchestrator: Orchestrator
    roles: Roles
    # platform -> posts a lead's correction into the conversation a turn came from (set by the
    # Slack and Teams adapters; the console calls it without importing either)
    correctors: dict[str, Callable[[TurnRow, str], Awaitable[bool]]] = field(default_factory=dict)
    # platform -> posts a notice into a turn's conversation (an answer interrupted by a replica
    # that died: bot/replicas.py)
    notifiers: dict[str, Callable[[TurnRow, str], Awaitable[bool]]] = field(default_factory=dict)
    # runs retraining jobs: in this process, or on the Redis queue for `deskmate worker`
    jobs: Any = None

    def retrainer(self) -> Any:
        from bot.retrain import Retrainer

        return Retrainer(self.settings, self.ledger, self.retrieval, self.generator)

    async def close(self) -> None:
        await self.generator.close()
        await self.ledger.close()
        await self.retrieval.close()


async def open_ledger(settings: Settings) -> Ledger:
    """The ledger, migrated when reachable; when it is not, writes are spooled until it is."""
    ledger = Ledger(settings.resolved_ledger_url(), settings.resolved_spool_dir())
    try:
        await ledger.migrate()
    except Exception as exc:  # noqa: BLE001
        log.warning("ledger.migrate_failed error=%s; turns will be spooled until it is back", exc)
        ledger.available = False
    return ledger


@dataclass
class Records:
    """The ledger and the retrieval stack without a model: what admin commands (retrain,
    forget) need."""

    retrieval: Retrieval
    ledger: Ledger

    async def close(self) -> None:
        await self.ledger.close()
        await self.retrieval.close()


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
    generator = generator or make_generator(settings)
    if settings.adapter:
        try:
            await generator.use_adapter(settings.adapter, settings.adapter_path)
        except AdapterNotServed as exc:
            log.error("adapter.refused name=%s reason=%s; serving the base model", settings.adapter, exc)
    orchestrator = Orchestrator(retrieval.searcher, generator, ledger, retrieval.cache, turn_policy(settings))
    deskmate = Deskmate(settings, retrieval, ledger, generator, orchestrator, roles_from_settings(settings))
    deskmate.jobs = job_runner(settings, lambda job_id: deskmate.retrainer().run(job_id))
    return deskmate


def job_runner(settings: Settings, body: Callable[[str], Awaitable[Any]]) -> Any:
    """Where retraining runs: this process, or the Redis queue (`job_queue`)."""
    from bot.jobs import InProcessRunner, RedisRunner, queue_name

    if settings.job_queue == "redis":
        if not settings.cache_url.startswith(("redis://", "rediss://")):
            raise ValueError("DESKMATE_JOB_QUEUE=redis needs DESKMATE_CACHE_URL to be a redis:// URL")
        return RedisRunner(settings.cache_url, queue_name(settings.cache_prefix))
    if settings.job_queue != "inprocess":
        raise ValueError(f"DESKMATE_JOB_QUEUE is `inprocess` or `redis`, not {settings.job_queue!r}")
    return InProcessRunner(body)


# --- the web server --------------------------------------------------------------------------

DESKMATE_KEY = web.AppKey("deskmate", Deskmate)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _token_ok(request: web.Request, token: str | None) -> bool:
    """No token configured, or `Authorization: Bearer <token>` (compared in constant time)."""
    if not token:
        return True
    sent = request.headers.get("Authorization", "")
    return sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].strip(), token)


def _ops_token(deskmate: Deskmate) -> str | None:
    token = deskmate.settings.metrics_token
    return token.get_secret_value() if token else None


async def readyz(request: web.Request) -> web.Response:
    """Ready or not, for a load balancer; each part's state (which names the backends and their
    errors) only for a caller with the metrics token when one is set."""
    deskmate = request.app[DESKMATE_KEY]
    parts = await readiness(deskmate)
    ready = all(p["ok"] for p in parts.values())
    body: dict[str, object] = {"ready": ready}
    if _token_ok(request, _ops_token(deskmate)):
        body["parts"] = parts
    return web.json_response(body, status=200 if ready else 503)


async def metrics_view(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if not _token_ok(request, _ops_token(request.app[DESKMATE_KEY])):
        return web.json_response(
            {"error": "/metrics needs Authorization: Bearer <DESKMATE_METRICS_TOKEN>"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)


def build_ops_app(deskmate: Deskmate) -> web.Application:
    """The operations listener (DESKMATE_OPS_PORT): health, readiness and metrics only, so that
    they can be bound to an address the platforms and employees never reach."""
    app = web.Application()
    app[DESKMATE_KEY] = deskmate
    _add_ops_routes(app)
    return app


def build_web_app(deskmate: Deskmate, host: str | None = None) -> web.Application:
    """The aiohttp application: health, metrics and every channel's routes, as far as listening
    on `host` (default: the settings' host) allows (bot/exposure.py; raises StartupRefused)."""
    from bot.channels import slack, teams
    from bot.channels import web as web_channel
    from bot.channels.common import Background
    from bot.console import routes as console

    settings = deskmate.settings
    faces = exposure(settings, host)
    forwarded = forwarded_middleware(settings)
    app = web.Application(client_max_size=2 * 1024 * 1024, middlewares=[forwarded] if forwarded else [])
    app[DESKMATE_KEY] = deskmate
    background = Background()
    if settings.ops_port:
        app.router.add_get("/healthz", healthz)  # liveness stays where the process answers
    else:
        _add_ops_routes(app)
    bind_host = settings.host if host is None else host
    if faces.web_chat:
        web_channel.add_routes(app, deskmate, bind_host)
    console.add_routes(app, deskmate)
    slack.add_routes(app, deskmate, background)
    if faces.teams != "off":
        teams.add_routes(app, deskmate, background, dev_open=faces.teams_open, bind_host=bind_host)

    async def finish_answers(_app: web.Application) -> None:
        await background.drain()

    async def follow_adapters(_app: web.Application):
        from bot import adapters
        from bot.jobs import InProcessRunner

        registry = deskmate.retrainer().registry
        try:
            await adapters.apply_live(deskmate.ledger, registry, deskmate.generator)
        except Exception as exc:  # noqa: BLE001 (a ledger outage at start must not stop the server)
            log.warning("adapter.startup_check_failed error=%s", exc)
        task = asyncio.create_task(
            adapters.follow_live(deskmate.ledger, registry, deskmate.generator, deskmate.settings.adapter_poll_seconds)
        )
        yield
        task.cancel()
        if isinstance(deskmate.jobs, InProcessRunner):
            await deskmate.jobs.stop()

    async def announce_replica(_app: web.Application):
        from bot import replicas
        from bot.forget import purge_cache
        from bot.retrain import resume_orphans

        async def resume_jobs(stale_after: timedelta) -> None:
            # A retraining job whose runner died (a worker pod replaced, a node lost) goes back
            # to the runner; every replica looks, one claims it (bot/jobs.py).
            await resume_orphans(deskmate.ledger, deskmate.jobs, stale_after)

        deskmate.ledger.replica = replicas.new_replica_id()
        task = asyncio.create_task(
            replicas.keep_alive(
                deskmate.ledger,
                deskmate.notifiers,
                deskmate.settings.replica_heartbeat_seconds,
                also=resume_jobs,
                # a `deskmate forget` run elsewhere reaches this process's own cache here
                forgotten=lambda stone: purge_cache(deskmate.retrieval.cache, stone),
            )
        )
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # after the answers in flight were drained (on_shutdown) and jobs stopped (follow_adapters)
        await replicas.leave(deskmate.ledger)

    app.on_shutdown.append(finish_answers)
    # Cleanup contexts unwind in reverse: the replica id exists before a resumed job stamps it
    # as its runner, and its heartbeat row goes only after in-process jobs have stopped.
    app.cleanup_ctx.append(announce_replica)
    app.cleanup_ctx.append(follow_adapters)
    return app
