"""Slack's Web API, Slack's Socket Mode and Teams' connector service, as one local HTTP server
that records every call Deskmate makes and answers the way the real services do.

Deskmate is pointed at it (the Slack SDK's `base_url`, the activity's `serviceUrl`), so a test
asserts on what Slack or Teams would have received."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    returned_id: str = ""

    @property
    def api(self) -> str:
        """`chat.postMessage` for Slack Web API calls, else the path."""
        return self.path.removeprefix("/api/") if self.path.startswith("/api/") else self.path


class Recorder:
    """The stand-in for Slack and Teams. `slack_users` / `teams_members` hold who exists;
    `slack_errors` makes a Web API method fail the way Slack reports errors."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.slack_users: dict[str, dict[str, Any]] = {}
        self.teams_members: dict[str, dict[str, Any]] = {}
        self.slack_errors: dict[str, str] = {}
        self.slack_usergroups: dict[str, list[str]] = {}  # user group id -> member user ids
        self.socket_acks: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    # --- running -------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._slack_api)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_get("/socket", self._socket)
        app.router.add_route("*", "/v3/{tail:.*}", self._teams)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for ws in self._sockets:
            await ws.close()
        if self._runner:
            await self._runner.cleanup()

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Call]], Any], timeout: float = 15.0) -> Any:
        """Wait until `predicate(calls)` is truthy; return its value."""

        async def until() -> Any:
            async with self._changed:
                while not (result := predicate(self.calls)):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(until(), timeout)

    def named(self, api: str) -> list[Call]:
        return [c for c in self.calls if c.api == api]

    # --- Slack Web API ---------------------------------------------------------------------------
    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.text()
        data: dict[str, Any] = dict(request.query)
        if not raw:
            return data
        if request.content_type == "application/json":
            data.update(json.loads(raw))
        else:
            data.update(dict(parse_qsl(raw)))
        return data

    async def _slack_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        body = await self._body(request)
        ts = f"{int(time.time())}.{next(self._ids):06d}"
        await self._record(
            Call(
                request.method,
                request.path,
                body,
                returned_id=ts if method in ("chat.postMessage", "chat.startStream") else "",
            )
        )
        if method in self.slack_errors:
            return web.json_response({"ok": False, "error": self.slack_errors[method]})
        if method == "auth.test":
            return web.json_response(
                {
                    "ok": True,
                    "user_id": "UBOT",
                    "bot_id": "BBOT",
                    "team_id": "T1",
                    "user": "deskmate",
                    "team": "Northwind",
                    "url": "https://northwind.slack.com/",
                }
            )
        if method == "users.info":
            user = self.slack_users.get(body.get("user", ""))
            if user is None:
                return web.json_response({"ok": False, "error": "user_not_found"})
            return web.json_response({"ok": True, "user": user})
        if method in ("chat.postMessage", "chat.startStream"):
            return web.json_response({"ok": True, "channel": body.get("channel"), "ts": ts})
        if method == "usergroups.users.list":
            members = self.slack_usergroups.get(body.get("usergroup", ""))
            if members is None:
                return web.json_response({"ok": False, "error": "no_such_subteam"})
            return web.json_response({"ok": True, "users": members})
        if method in ("views.open", "views.update", "views.push"):
            view = body.get("view") or {}
            view = json.loads(view) if isinstance(view, str) else view
            return web.json_response({"ok": True, "view": {"id": f"V{next(self._ids)}", **view}})
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": self.url.replace("http", "ws") + "/socket"})
        return web.json_response({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})

    async def _response_url(self, request: web.Request) -> web.Response:
        await self._record(Call("POST", request.path, await self._body(request)))
        return web.json_response({"ok": True})

    # --- Slack Socket Mode ---------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await self._record(Call("GET", "/socket", {}))
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "recorder", "approximate_connection_time": 3600},
            }
        )
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.socket_acks.append(data)
                await self._record(Call("WS", "/socket/ack", data))
        return ws

    async def push_socket_event(self, envelope: dict[str, Any]) -> None:
        """Deliver an envelope to every connected Socket Mode client."""
        for ws in self._sockets:
            if not ws.closed:
                await ws.send_json(envelope)

    # --- Teams connector -------------------------------------------------------------------------
    async def _teams(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and "members" in parts:
            await self._record(Call(request.method, request.path, body))
            member = self.teams_members.get(parts[-1])
            if member is None:
                return web.json_response({"error": {"code": "NotFound", "message": "no such member"}}, status=404)
            return web.json_response(member)
        new_id = f"msg-{next(self._ids)}"
        await self._record(Call(request.method, request.path, body, returned_id=new_id))
        return web.json_response({"id": new_id})
