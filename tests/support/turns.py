"""Turns for tests, made the two ways the tests need them: a `TurnStart` for a test that writes
the ledger directly (the ledger, rating and forgetting tests each built one by hand), and a
question asked through a real orchestrator as a person in the directory (the console and
retraining seeds and the console attacks each asked one by hand)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from bot.answering.messages import Answer, IncomingMessage
from bot.ledger.rows import TurnStart, new_turn_ids
from retrieval.store import KnowledgeStore


def new_turn(question: str, *, user_key: str, platform: str = "web", **fields: Any) -> TurnStart:
    """A `TurnStart` with new ids created now; `fields` are its other columns (channel, thread_id, groups…)."""
    turn_id, reference = new_turn_ids()
    return TurnStart(
        id=turn_id,
        reference=reference,
        created_at=datetime.now(UTC),
        platform=platform,
        user_key=user_key,
        question=question,
        **fields,
    )


async def ask_as(
    orchestrator: Any, store: KnowledgeStore, user_key: str, question: str, *, platform: str = "slack", **where: Any
) -> Answer:
    """Ask `question` through `orchestrator` as `user_key`, in a new thread, with the name and
    groups the directory in `store` holds for them (none for someone it lacks), as the platform
    adapters ask; `where` is the rest of the message (channel, private…)."""
    profile = await store.get_user(user_key)
    return await orchestrator.ask(
        IncomingMessage(
            platform=platform,
            user_key=user_key,
            user_name=profile.name if profile else "",
            text=question,
            thread_id=str(uuid.uuid4()),
            groups=profile.groups if profile else (),
            **where,
        )
    )
