"""A running Deskmate with answered turns in its ledger, and signed-in HTTP sessions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.messages import IncomingMessage
from tests.conftest import REDIS_URL, RunningServer, running_server

LEAD = "hannah.schmidt@northwind.example"
ADMIN = "sofia.martins@northwind.example"
EMPLOYEE = "lukas.becker@northwind.example"
QUESTIONS = [
    (EMPLOYEE, "How do I reset my VPN password?", "slack", False),
    ("ana.ribeiro@northwind.example", "How do I report a phishing email?", "teams", True),
    (EMPLOYEE, "What is the airspeed velocity of an unladen swallow?", "slack", True),  # not covered
]


def console_settings(tmp_path: Path, store_url: str, redis_prefix: str, **overrides: object) -> dict[str, object]:
    return {
        "data_dir": tmp_path,
        "store_url": store_url,
        "cache_url": REDIS_URL,
        "cache_prefix": f"{redis_prefix}console{uuid.uuid4().hex[:6]}:",
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "generator_url": "echo://",
        "leads": [LEAD],
        "admins": [ADMIN],
        **overrides,
    }


async def seed(server: RunningServer) -> list[str]:
    """Ask the example questions through the real orchestrator; returns their turn ids."""
    ids = []
    for user, question, platform, private in QUESTIONS:
        profile = await server.deskmate.retrieval.store.get_user(user)
        answer = await server.deskmate.orchestrator.ask(
            IncomingMessage(
                platform=platform,
                user_key=user,
                user_name=profile.name if profile else "",
                text=question,
                channel="C1" if platform == "slack" else "a:1",
                thread_id=str(uuid.uuid4()),
                groups=profile.groups if profile else (),
                private=private,
            )
        )
        ids.append(answer.turn_id)
    return ids


@pytest.fixture
async def console_server(
    tmp_path: Path, example_store_url: str, embedder: Any, redis_prefix: str
) -> AsyncIterator[RunningServer]:
    async with running_server(embedder, **console_settings(tmp_path, example_store_url, redis_prefix)) as server:
        server.turn_ids = await seed(server)  # type: ignore[attr-defined]
        yield server
