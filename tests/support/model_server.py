"""A model server on loopback that speaks the OpenAI chat API as vLLM and TGI do (`/v1/models`,
streamed `/v1/chat/completions`) and answers every request with the next scripted reply: the
real `RemoteGenerator` talks to it over HTTP, so a test can decide what "the model" wrote and
check what Deskmate does with it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

MODEL_ID = "org/scripted-1b"


@asynccontextmanager
async def scripted_model(replies: list[str]) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Serve `replies` in turn (the last one repeats); yields (base URL, request bodies seen)."""
    seen: list[dict[str, Any]] = []

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        reply = replies[min(len(seen), len(replies)) - 1]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(reply.split(" ")):
            chunk = {
                "id": str(len(seen)),
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL_ID,
                "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async with openai_compatible(models, chat) as url:
        yield url, seen


@asynccontextmanager
async def openai_compatible(
    models: Callable[[web.Request], Awaitable[web.StreamResponse]],
    chat: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """`models` and `chat` served as `/v1/models` and `/v1/chat/completions` on a free loopback
    port; yields the base URL."""
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
