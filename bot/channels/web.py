"""The local web chat: a page at `/` for trying Deskmate without Slack or Teams.

Pick a person from the imported directory, ask, watch the answer stream in (newline-delimited
JSON over one chunked response), see its sources. The page trusts the person you pick, so it is
meant for a laptop: the server mounts it only on loopback unless the operator said otherwise
(bot/exposure.py), and every request must name this server in its Host (and, from a browser,
Origin) header and send JSON, so that another web page open in the same browser (a cross-site
form post, a DNS-rebinding page) cannot drive it or read the directory.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from aiohttp import web

from bot.answering.messages import Delta, Done, IncomingMessage, Status
from bot.deskmate import Deskmate
from bot.exposure import allowed_authorities, refusal
from retrieval.store import StoreUnavailable

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def add_routes(app: web.Application, deskmate: Deskmate, bind_host: str) -> None:
    """Register the page and its two JSON endpoints (the server decides whether to call this:
    bot/exposure.py)."""
    allowed = allowed_authorities(bind_host, deskmate.settings.allowed_hosts)

    @web.middleware
    async def same_origin(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path in ("/", "/api/users", "/api/ask"):
            reason = refusal(request, allowed)
            if reason is not None:
                log.warning("web.refused path=%s reason=%s", request.path, reason)
                return web.json_response({"error": f"refused: {reason}"}, status=403)
        return await handler(request)

    app.middlewares.append(same_origin)

    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            STATIC / "chat.html",
            headers={
                "Cache-Control": "no-cache",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            },
        )

    async def users(_request: web.Request) -> web.Response:
        people = await deskmate.retrieval.store.users()
        return web.json_response(
            [
                {"key": p.key, "name": p.name or p.key, "department": p.department, "groups": list(p.groups)}
                for p in people
            ]
        )

    async def ask(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            # A cross-site <form> can post text/plain or form data without a preflight; it
            # cannot post JSON.
            return web.json_response(
                {"error": "send the question as JSON (Content-Type: application/json)"}, status=415
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": 'the body must be JSON: {"user": …, "question": …}'}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("question"), str):
            return web.json_response({"error": "`question` (text) is required"}, status=400)
        user_key = str(body.get("user") or "").strip().lower()
        try:
            profile = await deskmate.retrieval.store.get_user(user_key) if user_key else None
        except StoreUnavailable as exc:
            return web.json_response({"error": f"the knowledge store is not reachable yet: {exc}"}, status=503)
        if profile is None:
            return web.json_response({"error": f"unknown user {user_key!r}: pick one from the list"}, status=400)
        message = IncomingMessage(
            platform="web",
            user_key=profile.key,
            user_name=profile.name,
            text=body["question"],
            channel="web",
            thread_id=str(body.get("thread") or uuid.uuid4()),
            groups=profile.groups,
            private=True,
        )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        async for event in deskmate.orchestrator.handle(message):
            line: dict[str, object]
            if isinstance(event, Status):
                line = {"type": "status", "text": event.text}
            elif isinstance(event, Delta):
                line = {"type": "delta", "text": event.text}
            elif isinstance(event, Done):
                line = {"type": "done", "answer": event.answer.to_dict()}
            await response.write((json.dumps(line) + "\n").encode())
        await response.write_eof()
        return response

    app.router.add_get("/", page)
    app.router.add_get("/api/users", users)
    app.router.add_post("/api/ask", ask)
