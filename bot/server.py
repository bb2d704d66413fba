"""The HTTP server: health, readiness and metrics, and every face's routes (Slack, Teams, the
web chat, the review console). The only module that imports the channels and the console.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import replicas
from bot.channels import web as web_channel
from bot.channels.common import Background
from bot.channels.slack import channel as slack
from bot.channels.teams import channel as teams
from bot.console import routes as console
from bot.deskmate import Deskmate
from bot.exposure import exposure, forwarded_middleware
from bot.feedback.forget import purge_cache
from bot.health import readiness
from bot.training import adapters
from bot.training.retrain import resume_orphans

log = logging.getLogger(__name__)


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

    async def follow_adapters(_app: web.Application) -> AsyncIterator[None]:
        registry = deskmate.registry
        try:
            await adapters.apply_live(deskmate.ledger, registry, deskmate.generator)
        except Exception as exc:  # noqa: BLE001 (a ledger outage at start must not stop the server)
            log.warning("adapter.startup_check_failed error=%s", exc)
        task = asyncio.create_task(
            adapters.follow_live(deskmate.ledger, registry, deskmate.generator, deskmate.settings.adapter_poll_seconds)
        )
        yield
        task.cancel()
        await deskmate.jobs.stop()

    async def announce_replica(_app: web.Application) -> AsyncIterator[None]:
        async def resume_jobs(stale_after: timedelta) -> None:
            # A retraining job whose runner died (a worker pod replaced, a node lost) goes back
            # to the runner; every replica looks, one claims it (bot/training/jobs.py).
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
