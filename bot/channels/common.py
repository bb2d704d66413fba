"""What Slack and Teams share: who is asking, what a channel may see, how an answer streams,
and work that outlives the HTTP request. No platform SDK is imported here."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from bot.answering.messages import AnswerEvent, Delta, Done, Status
from bot.settings import ChannelRule, Settings
from retrieval.cache import Cache
from retrieval.store import KnowledgeStore
from retrieval.users import user_key

log = logging.getLogger(__name__)

IDENTITY_TTL_SECONDS = 24 * 3600
IDENTITY_MISS_TTL_SECONDS = 60  # a failed lookup is asked again soon: it splits a person's history
ANSWER_MESSAGE_TTL_SECONDS = 30 * 24 * 3600
DEDUP_TTL_SECONDS = 3600

HELP_TEXT = (
    "I answer questions from the company knowledge base and cite where the answer comes from.\n"
    "• Ask me in a direct message, or mention me in a channel: I answer in a thread and follow "
    "up there without another mention.\n"
    "• Rate answers with the feedback buttons: support leads read them and the model learns from them.\n"
    "• Quote the reference under an answer when you contact support about it."
)


@dataclass(frozen=True)
class Person:
    """The asker, as Deskmate knows them across platforms."""

    key: str
    name: str
    groups: tuple[str, ...]


async def find_person(
    store: KnowledgeStore, *, platform: str, platform_id: str, email: str | None, name: str = ""
) -> Person:
    """The directory entry for an email (the key Slack and Teams share), else a platform key.

    A person missing from the directory still gets answers, from public documents only."""
    key = user_key(email, platform, platform_id)
    try:
        profile = await store.get_user(key)
    except Exception as exc:  # noqa: BLE001 (a store outage must not drop the message unanswered)
        # Without the directory the person is treated as unknown: public documents only, the
        # safe direction; the turn that follows records the outage if search fails too.
        log.warning("directory.unavailable user=%s error=%s", key, type(exc).__name__)
        return Person(key, name, ())
    if profile is None:
        return Person(key, name, ())
    return Person(profile.key, profile.name or name, profile.groups)


async def identify(
    cache: Cache,
    store: KnowledgeStore,
    *,
    platform: str,
    platform_id: str,
    lookup: Callable[[], Awaitable[tuple[str | None, str]]],
    fallback_name: str = "",
    cache_id: str | None = None,
) -> Person:
    """A platform user as a Deskmate person: `lookup()` asks the platform for (email, name);
    the answer is cached for a day, a failure (which raises) for a minute."""
    cache_key = f"{platform}-user:{cache_id or platform_id}"
    raw = await cache.get(cache_key)
    if raw is not None:
        email, name = json.loads(raw)
    else:
        ttl = IDENTITY_TTL_SECONDS
        try:
            email, name = await lookup()
        except Exception as exc:  # noqa: BLE001 (each platform's SDK raises its own kinds)
            log.warning("%s.identity_lookup_failed user=%s error=%s", platform, platform_id, exc)
            email, name, ttl = None, fallback_name, IDENTITY_MISS_TTL_SECONDS
        await cache.set(cache_key, json.dumps([email, name]).encode(), ttl=ttl)
    return await find_person(store, platform=platform, platform_id=platform_id, email=email, name=name)


def channel_rule(settings: Settings, platform: str, channel: str) -> ChannelRule:
    return settings.channels.get(f"{platform}:{channel}") or ChannelRule()


def answer_groups(person: Person, *, private: bool, rule: ChannelRule) -> tuple[str, ...]:
    """The access groups an answer may draw on. In private (a DM, an assistant thread) all of the
    asker's; where others read along, only those both the asker and the channel are cleared for."""
    if private:
        return person.groups
    allowed = {g.lower() for g in rule.groups}
    return tuple(g for g in person.groups if g in allowed)


async def first_time(cache: Cache, key: str, *, redelivery: bool = False) -> bool:
    """True for the first delivery of an event id, across every replica sharing the cache.

    When the cache cannot tell (Redis down, or so slow the claim times out), a first delivery
    is answered (answering beats dropping) but a platform's redelivery is not: its first
    delivery reached a replica, which answered it on the same rule. Measured: at 1,600 answers
    in flight on one replica, failing open for retries answered 25 events twice."""
    return await cache.add(f"seen:{key}", b"1", ttl=DEDUP_TTL_SECONDS, if_unsure=not redelivery)


async def remember_answer_message(cache: Cache, platform: str, message_id: str, turn_id: str) -> None:
    """Which turn a posted message carries, for feedback that names only the message."""
    await cache.set(f"answer-msg:{platform}:{message_id}", turn_id.encode(), ttl=ANSWER_MESSAGE_TTL_SECONDS)


async def turn_of_message(cache: Cache, platform: str, message_id: str) -> str | None:
    raw = await cache.get(f"answer-msg:{platform}:{message_id}")
    return raw.decode() if raw else None


@dataclass(frozen=True)
class Update:
    """A batch of the stream: the text so far (`text`), the part new since the last batch."""

    text: str
    new: str


async def batched(events: AsyncIterator[AnswerEvent], interval: float) -> AsyncIterator[Status | Update | Done]:
    """Coalesce an answer's deltas into at most one update per `interval` seconds, because Slack
    and Teams both throttle message edits (about one per second per conversation)."""
    text, sent_upto, last = "", 0, 0.0
    async for event in events:
        if isinstance(event, Delta):
            text += event.text
            now = time.monotonic()
            if now - last >= interval and text.strip():
                yield Update(text, text[sent_upto:])
                sent_upto, last = len(text), now
        elif isinstance(event, Done):
            if sent_upto < len(text):
                yield Update(text, text[sent_upto:])
            yield event
        else:
            yield event


class Background:
    """Work that runs after the platform got its fast answer (Slack's ack, Teams' 202), kept
    referenced so it is not garbage-collected, and awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    def spawn(self, work: Awaitable[object], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "channel.task_failed task=%s error=%r", task.get_name(), task.exception(), exc_info=task.exception()
            )

    async def drain(self, timeout: float = 30.0) -> None:
        """Let answers in flight finish (up to `timeout`, including work they start), then cancel
        the rest and wait for their clean-up (an abandoned turn is still written to the ledger)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("channel.shutdown_cancelled tasks=%d", len(pending))
