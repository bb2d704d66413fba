"""Requests in the platforms' real shapes (Slack's signed events, forms and slash commands,
Teams' activities), the local stand-in for both (tests/support/recorder.py) started with the
people it knows, the settings of a Deskmate wired to it, what Deskmate sent into a Teams
conversation, and what the ledger holds afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import select

from bot.ledger.rows import FeedbackRow, TurnRow
from tests.support.recorder import Call, Recorder
from tests.support.server import RunningServer
from tests.support.services import REDIS_URL

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
LUKAS = "lukas.becker@northwind.example"
ANA = "ana.ribeiro@northwind.example"
VPN_QUESTION = "How do I reset my VPN password?"
_ts = itertools.count(1)


#: Who the stand-in knows: Lukas (his Slack profile's email in other capitals, as Slack may hold
#: it) and Ana on both platforms, and a Slack guest with no email.
SLACK_USERS: dict[str, dict[str, Any]] = {
    "U1": {
        "id": "U1",
        "name": "lukas",
        "real_name": "Lukas Becker",
        "profile": {"email": "Lukas.Becker@northwind.example", "real_name": "Lukas Becker"},
    },
    "U2": {
        "id": "U2",
        "name": "ana",
        "real_name": "Ana Ribeiro",
        "profile": {"email": ANA, "real_name": "Ana Ribeiro"},
    },
    "U9": {"id": "U9", "name": "guest", "real_name": "A Guest", "profile": {}},
}
TEAMS_MEMBERS: dict[str, dict[str, Any]] = {
    "29:lukas": {
        "id": "29:lukas",
        "name": "Lukas Becker",
        "aadObjectId": "aad-lukas",
        "email": LUKAS,
        "userPrincipalName": LUKAS,
    },
    "29:ana": {"id": "29:ana", "name": "Ana Ribeiro", "aadObjectId": "aad-ana", "userPrincipalName": ANA},
}


@contextlib.asynccontextmanager
async def platforms_stand_in() -> AsyncIterator[Recorder]:
    """The local Slack and Teams (tests/support/recorder.py), started, knowing SLACK_USERS and
    TEAMS_MEMBERS (copies: a test may change its own)."""
    rec = Recorder()
    await rec.start()
    rec.slack_users = copy.deepcopy(SLACK_USERS)
    rec.teams_members = copy.deepcopy(TEAMS_MEMBERS)
    try:
        yield rec
    finally:
        await rec.stop()


def chat_settings(
    tmp_path: Path, example_store_url: str, redis_prefix: str, recorder: Recorder, **overrides: object
) -> dict[str, object]:
    return {
        "data_dir": tmp_path,
        "store_url": example_store_url,
        "cache_url": REDIS_URL,
        "cache_prefix": f"{redis_prefix}chat{uuid.uuid4().hex[:6]}:",
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "generator_url": "echo://",
        "slack_bot_token": "xoxb-test",
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": f"{recorder.url}/api/",
        "stream_interval": 0.2,
        # the Teams tests send unsigned activities: the development flag (loopback only)
        "teams_dev_open": True,
        "channels": {"slack:COPEN": {"mention_only": False}, "slack:CHR": {"groups": ["hr"]}},
        **overrides,
    }


# --- Slack ---------------------------------------------------------------------------------------


def slack_ts() -> str:
    return f"{int(time.time())}.{next(_ts):06d}"


def event_callback(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """An Events API envelope as Slack sends it."""
    return {
        "token": "legacy-token",
        "team_id": "T1",
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "event_context": "4-eyJldCI6ImFwcF9tZW50aW9uIn0",
        "authorizations": [
            {"enterprise_id": None, "team_id": "T1", "user_id": "UBOT", "is_bot": True, "is_enterprise_install": False}
        ],
        "is_ext_shared_channel": False,
    }


def mention(text: str, *, user: str = "U1", channel: str = "CGEN", thread_ts: str | None = None) -> dict[str, Any]:
    ts = slack_ts()
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@UBOT> {text}",
        "ts": ts,
        "team": "T1",
        "channel": channel,
        "event_ts": ts,
        "blocks": [{"type": "rich_text", "block_id": "b1", "elements": []}],
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(
    text: str,
    *,
    user: str = "U1",
    channel: str = "D1",
    channel_type: str = "im",
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    ts = slack_ts()
    event = {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "team": "T1",
        "channel": channel,
        "event_ts": ts,
        "channel_type": channel_type,
        **extra,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


async def slack_post(
    url: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, float]:
    """A signed request to /slack/events; returns status, body and seconds to the response."""
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    sent = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        **(headers or {}),
    }
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http, http.post(f"{url}/slack/events", data=body, headers=sent) as r:
        return r.status, await r.text(), time.perf_counter() - started


async def slack_event(url: str, payload: dict[str, Any], **kwargs: Any) -> tuple[int, str, float]:
    return await slack_post(url, json.dumps(payload).encode(), **kwargs)


async def slack_form(url: str, fields: dict[str, str], **kwargs: Any) -> tuple[int, str, float]:
    return await slack_post(url, urlencode(fields).encode(), content_type="application/x-www-form-urlencoded", **kwargs)


def streamed_text(rec: Recorder, ts: str) -> str:
    """The text a streamed Slack message ended up with."""
    parts = []
    for call in rec.calls:
        opened = call.api == "chat.startStream" and call.returned_id == ts
        if opened or (call.api in ("chat.appendStream", "chat.stopStream") and call.body.get("ts") == ts):
            parts.append(call.body.get("markdown_text") or "")
    return "".join(parts)


# --- Teams ---------------------------------------------------------------------------------------


def activity(
    text: str,
    *,
    service_url: str,
    sender: str = "29:lukas",
    aad: str = "aad-lukas",
    kind: str = "personal",
    conversation: str | None = None,
    mention_bot: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A message activity in the shape Teams posts it."""
    conv_id = (
        conversation
        or {
            "personal": "a:1personal-lukas",
            "groupChat": "19:group@thread.v2",
            "channel": "19:general@thread.tacv2;messageid=1700000000000",
        }[kind]
    )
    body: dict[str, Any] = {
        "type": "message",
        "id": f"1{uuid.uuid4().int % 10**12:012d}",
        "timestamp": "2026-11-23T10:00:00.000Z",
        "localTimestamp": "2026-11-23T11:00:00.000+01:00",
        "serviceUrl": service_url + "/",
        "channelId": "msteams",
        "from": {"id": sender, "name": "Lukas Becker", "aadObjectId": aad},
        "conversation": {
            "id": conv_id,
            "conversationType": kind,
            "tenantId": "tenant-1",
            **({"isGroup": True} if kind != "personal" else {}),
        },
        "recipient": {"id": "28:deskmate-bot", "name": "Deskmate"},
        "textFormat": "plain",
        "locale": "en-US",
        "text": text,
        "entities": [{"type": "clientInfo", "locale": "en-US", "country": "US", "platform": "Web"}],
        "channelData": {"tenant": {"id": "tenant-1"}},
        **extra,
    }
    if kind == "channel":
        body["channelData"].update(
            {
                "teamsChannelId": "19:general@thread.tacv2",
                "teamsTeamId": "19:team@thread.tacv2",
                "channel": {"id": "19:general@thread.tacv2"},
                "team": {"id": "19:team@thread.tacv2"},
            }
        )
    if mention_bot:
        body["text"] = f"<at>Deskmate</at> {text}"
        body["entities"].append(
            {"type": "mention", "text": "<at>Deskmate</at>", "mentioned": {"id": "28:deskmate-bot", "name": "Deskmate"}}
        )
    return body


async def teams_post(
    url: str, body: Any, *, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, float]:
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/messages", data=data, headers=sent) as r:
        return r.status, await r.text(), time.perf_counter() - started


def teams_sent(rec: Recorder, conversation: str) -> list[Call]:
    """Activities Deskmate sent into one Teams conversation (typing, streamed and final)."""
    return [
        c for c in rec.calls if c.method == "POST" and c.path.startswith(f"/v3/conversations/{conversation}/activities")
    ]


def teams_messages(rec: Recorder, conversation: str) -> list[Call]:
    """The message activities among them: answers, notes and replies, not typing updates."""
    return [c for c in teams_sent(rec, conversation) if c.body.get("type") == "message"]


async def teams_reply(rec: Recorder, conversation: str) -> Call:
    """Wait for Deskmate's first message activity in the conversation (a streamed answer's final one)."""
    return await rec.wait_for(lambda calls: next(iter(teams_messages(rec, conversation)), None))


# --- the ledger ----------------------------------------------------------------------------------


async def turns_of(server: RunningServer, platform: str) -> list[TurnRow]:
    return [t for t in await server.deskmate.ledger.recent_turns(200) if t.platform == platform]


async def wait_for_turns(server: RunningServer, platform: str, count: int, timeout: float = 15.0) -> list[TurnRow]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [t for t in await turns_of(server, platform) if t.status != "pending"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def ratings(server: RunningServer, timeout: float = 10.0, count: int = 1) -> list[FeedbackRow]:
    deadline = time.monotonic() + timeout
    while True:
        async with server.deskmate.ledger.sessions() as session:
            rows = list(await session.scalars(select(FeedbackRow).order_by(FeedbackRow.id)))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


# A slash command as Slack posts it (form fields), less the user, text and response_url.
COMMAND = {
    "token": "legacy",
    "team_id": "T1",
    "team_domain": "northwind",
    "channel_id": "D1",
    "channel_name": "directmessage",
    "command": "/deskmate",
    "api_app_id": "A1",
    "trigger_id": "1.2.3",
}
