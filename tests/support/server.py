"""`deskmate serve` in the test's own process: the real app over real HTTP on a free port, and
an adapter registered as a finished retraining job would leave it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bot.deskmate import Deskmate
from bot.server import build_web_app
from bot.settings import Settings
from bot.training import adapters
from bot.wiring import open_deskmate
from finetune.model import BASE_MODEL_ID
from finetune.registry import new_name
from retrieval.embeddings import Embedder


@dataclass
class RunningServer:
    url: str
    deskmate: Deskmate
    settings: Settings


#: What the `serve_chat` and `serve_console` fixtures give a test: settings overrides in, a
#: server to enter with `async with`.
ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]


@contextlib.asynccontextmanager
async def running_server(embedder: Embedder, **overrides: object) -> AsyncIterator[RunningServer]:
    """`deskmate serve` in this process on a free port: the real app over real HTTP."""
    settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
    deskmate = await open_deskmate(settings, embedder=embedder)
    runner = web.AppRunner(build_web_app(deskmate), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", deskmate, settings)
    finally:
        await runner.cleanup()
        await deskmate.close()


async def register_adapter(
    deskmate: Deskmate,
    source: Path,
    *,
    status: str = "candidate",
    base_model: str | None = None,
    started_by: str = "tests",
) -> str:
    """Put an adapter folder into the running Deskmate's registry and ledger, as a finished
    retraining job would; returns its new version name."""
    name = new_name(BASE_MODEL_ID)
    info = deskmate.registry.register(
        name,
        source,
        {
            "base_model": base_model or BASE_MODEL_ID,
            "started_by": started_by,
            "evaluation": {
                "candidate": {"token_f1": 0.5},
                "live": {"token_f1": 0.4},
                "decision": {"promote": status != "rejected", "reasons": ["set by the test"]},
            },
        },
    )
    await adapters.record_candidate(deskmate.ledger, info, status)
    return name
