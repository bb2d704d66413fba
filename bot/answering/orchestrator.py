"""One turn, from a platform-neutral message to a streamed, cited answer on record.

Order of work (each stage timed into the turn record):
validate → rate limit → history → answer cache → ledger begin → retrieval → prompt → generate
(streaming) → citations → ledger finish → history and cache updates.

The turn is on record before retrieval and generation, the parts that are slow and can fail;
a turn that ends earlier (a cache hit, a refusal) is written whole in one commit. Every way
out of `handle` (an answer, an apology, a refusal, a client that went away) records the turn,
so a support lead can always see what was asked and what came of it. This module never imports Slack or Teams code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot import metrics
from bot.answering.generation import GenerationError, Generator
from bot.answering.messages import Answer, AnswerEvent, Delta, Done, IncomingMessage, Outcome, Source, Status
from bot.answering.prompts import build_messages, cited_numbers, cut_repetition, says_unknown
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart, new_turn_ids
from bot.ledger.tombstones import user_tag
from bot.settings import Settings
from retrieval.cache import Cache
from retrieval.records import Hit, reader_groups
from retrieval.search import Searcher, SearchResult, earlier_questions

log = logging.getLogger(__name__)

HISTORY_TTL_SECONDS = 24 * 3600
HAS_WORDS = re.compile(r"[^\W_]", re.UNICODE)


@dataclass
class TurnPolicy:
    """The knobs of a turn (from settings)."""

    prompt_version: str = "v1"
    context_passages: int = 3
    max_answer_tokens: int = 200
    generator_timeout: float = 60.0
    fallback_contact: str = "your support team"
    rate_limit_per_minute: int = 12
    answer_cache_ttl: float = 24 * 3600
    history_turns: int = 3
    use_retrieval: bool = True  # off only to measure the model alone (bench/answer_quality.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> TurnPolicy:
        return cls(
            prompt_version=settings.prompt_version,
            context_passages=settings.context_passages,
            max_answer_tokens=settings.max_answer_tokens,
            generator_timeout=settings.generator_timeout,
            fallback_contact=settings.fallback_contact,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            answer_cache_ttl=settings.answer_cache_ttl,
            history_turns=settings.history_turns,
        )


@dataclass
class _Turn:
    """What one turn has gathered so far; becomes the ledger's `TurnEnd`."""

    message: IncomingMessage
    turn_id: str
    reference: str
    start: TurnStart
    started: float = field(default_factory=time.perf_counter)
    latency: dict[str, float] = field(default_factory=dict)
    begun: bool = False
    finished: bool = False

    def lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.latency[stage] = round((now - since) * 1000, 2)
        metrics.STAGE_SECONDS.labels(stage).observe(now - since)
        return now


def normalise_question(text: str) -> str:
    """The form questions are cached under: case, spacing and trailing punctuation ignored."""
    return " ".join(text.lower().split()).rstrip(" ?!.")


class Orchestrator:
    """Answers messages. One instance serves every channel and every request."""

    def __init__(
        self, searcher: Searcher, generator: Generator, ledger: Ledger, cache: Cache, policy: TurnPolicy | None = None
    ) -> None:
        self.searcher = searcher
        self.generator = generator
        self.ledger = ledger
        self.cache = cache
        self.policy = policy or TurnPolicy()

    # --- the public entry --------------------------------------------------------------------
    async def handle(self, message: IncomingMessage) -> AsyncGenerator[AnswerEvent, None]:
        """Stream the events of one turn; the last one is always `Done`."""
        turn_id, reference = new_turn_ids()
        turn = _Turn(
            message,
            turn_id,
            reference,
            TurnStart(
                id=turn_id,
                reference=reference,
                created_at=datetime.now(UTC),
                platform=message.platform,
                user_key=message.user_key,
                question=message.text,
                workspace=message.workspace,
                channel=message.channel,
                thread_id=message.thread_id,
                user_name=message.user_name,
                private=message.private,
                groups=list(message.groups),
            ),
        )
        try:
            async for event in self._answer(turn):
                yield event
        except Exception as exc:
            log.exception("turn.internal_error turn=%s", turn_id)
            metrics.ERRORS.labels("internal").inc()
            answer = self._apology(turn)
            await self._finish(
                turn, answer, TurnEnd(status="failed", answer=answer.text, error=f"{type(exc).__name__}: {exc}")
            )
            yield Done(answer)
        finally:
            if not turn.finished:
                # The consumer went away mid-answer (a closed page, a killed request).
                await asyncio.shield(
                    self._record(
                        turn,
                        TurnEnd(
                            status="failed",
                            error="the answer was abandoned before it finished",
                            latency_ms=turn.latency,
                        ),
                    )
                )
                metrics.TURNS.labels(message.platform, "failed").inc()

    async def ask(self, message: IncomingMessage) -> Answer:
        """The final answer of a turn, without the stream."""
        answer = None
        async for event in self.handle(message):
            if isinstance(event, Done):
                answer = event.answer
        assert answer is not None
        return answer

    # --- the turn ----------------------------------------------------------------------------
    async def _answer(self, turn: _Turn) -> AsyncIterator[AnswerEvent]:
        message, policy = turn.message, self.policy
        question = " ".join(message.text.split())
        if not HAS_WORDS.search(question):
            answer = self._make(
                turn, "invalid", 'Ask me a question in words, for example: "How do I reset my VPN password?"'
            )
            await self._finish(turn, answer, TurnEnd(status="invalid", answer=answer.text))
            yield Done(answer)
            return

        if policy.rate_limit_per_minute and await self._over_rate_limit(message.user_key):
            answer = self._make(
                turn,
                "rate_limited",
                "You're asking faster than I can keep up with. Please wait a minute and ask again.",
            )
            await self._finish(turn, answer, TurnEnd(status="rate_limited", answer=answer.text))
            yield Done(answer)
            return

        since = time.perf_counter()
        history = await self._history(message.conversation_key)
        since = turn.lap("history", since)

        search_text, truncated = self.searcher.prepare(question)
        notice = f"Your message was long, so I read its first {len(search_text):,} characters." if truncated else ""
        version = await self.searcher.kb_version()
        cache_key = None if history else self._answer_key(search_text, message, version)
        if cache_key and policy.answer_cache_ttl:
            cached = await self.cache.get(cache_key)
            since = turn.lap("answer_cache", since)
            if cached is not None:
                async for event in self._serve_cached(turn, json.loads(cached), notice):
                    yield event
                return

        # On record before the slow, fallible part: a crash from here on leaves the question.
        begin = time.perf_counter()
        await self._safely("begin", self.ledger.begin_turn(turn.start))
        turn.begun = True
        since = turn.lap("ledger_begin", begin)

        yield Status("Searching the knowledge base…")
        earlier = earlier_questions(history, turns=1)
        if policy.use_retrieval:
            result = await self.searcher.search(
                search_text,
                groups=message.groups,
                k=policy.context_passages,
                user_key=message.user_key,
                earlier=earlier,
                kb_version=version,
            )
        else:
            result = SearchResult(query=search_text, hits=[], confidence=1.0, confident=True, kb_version=version)
        since = turn.lap("retrieval", since)
        retrieved = [self._served_chunk(h) for h in result.hits]
        searched = f"{earlier} | {result.query}" if earlier else result.query
        common: dict[str, Any] = {
            "search_query": searched,
            "retrieved": retrieved,
            "user_facts": result.user_facts,
            "kb_version": result.kb_version,
            "confidence": result.confidence,
            "model": self.generator.model,
            "adapter_version": self.generator.adapter,
            "prompt_version": policy.prompt_version,
        }

        if not result.confident:
            answer = self._make(turn, "unknown", self._not_covered(), confidence=result.confidence, notice=notice)
            await self._finish(turn, answer, TurnEnd(status="unknown", answer=answer.text, **common))
            await self._remember(message.conversation_key, history, question, answer.text)
            yield Done(answer)
            return

        prompt, tampered = build_messages(result.query, result.hits, result.user_facts, version=policy.prompt_version)
        if tampered:
            log.warning("turn.instructions_removed turn=%s chunks=%s", turn.turn_id, ",".join(tampered))
        since = turn.lap("prompt", since)

        yield Status("Writing the answer…")
        pieces: list[str] = []
        try:
            async with asyncio.timeout(policy.generator_timeout):
                first = True
                stream = self.generator.stream(prompt, max_tokens=policy.max_answer_tokens)
                async for piece in stream:
                    if first:
                        turn.latency["first_token"] = round((time.perf_counter() - since) * 1000, 2)
                        first = False
                    pieces.append(piece)
                    yield Delta(piece)
                    if any(c in piece for c in ".!?\n") and cut_repetition("".join(pieces))[1]:
                        await stream.aclose()  # stops the model: the rest would be the loop
                        break
        except (GenerationError, TimeoutError) as exc:
            kind = getattr(exc, "kind", "timeout")
            log.warning("turn.generation_failed turn=%s kind=%s error=%s", turn.turn_id, kind, exc)
            metrics.ERRORS.labels(f"generator_{kind}").inc()
            turn.lap("generation", since)
            answer = self._apology(turn)
            await self._finish(
                turn,
                answer,
                TurnEnd(
                    status="failed", answer=answer.text, error=f"{type(exc).__name__}: {exc}", prompt=prompt, **common
                ),
            )
            yield Done(answer)
            return
        turn.lap("generation", since)

        text, looped = cut_repetition("".join(pieces).strip())
        if looped:
            log.info("turn.repetition_cut turn=%s", turn.turn_id)
        answer = self._finalise(turn, text, result, notice)
        await self._finish(
            turn,
            answer,
            TurnEnd(
                status=answer.outcome,
                answer=answer.text,
                prompt=prompt,
                cited=[s.chunk_id for s in answer.sources],
                **common,
            ),
        )
        await self._remember(message.conversation_key, history, question, answer.text)
        if cache_key and policy.answer_cache_ttl and answer.outcome == "answered":
            payload = {"answer": asdict(answer), "common": common, "prompt": prompt}
            await self.cache.set(cache_key, json.dumps(payload).encode(), ttl=policy.answer_cache_ttl)
        yield Done(answer)

    # --- pieces ------------------------------------------------------------------------------
    def _finalise(self, turn: _Turn, text: str, result: SearchResult, notice: str) -> Answer:
        """Citations mapped to sources; an "I don't know" turned into who to ask."""
        if says_unknown(text):
            return self._make(
                turn, "unknown", f"{text}\n\n{self._not_covered()}".strip(), confidence=result.confidence, notice=notice
            )
        numbers = cited_numbers(text, len(result.hits)) or ([1] if result.hits else [])
        sources, seen_docs = [], set()
        for number in numbers:
            chunk = result.hits[number - 1].chunk
            if chunk.doc_id in seen_docs:
                continue
            seen_docs.add(chunk.doc_id)
            sources.append(Source(number, chunk.doc_id, chunk.title, chunk.url, chunk.heading, chunk.id))
        return self._make(turn, "answered", text, sources=sources, confidence=result.confidence, notice=notice)

    def _make(self, turn: _Turn, outcome: Outcome, text: str, **kwargs: Any) -> Answer:
        return Answer(
            turn_id=turn.turn_id,
            reference=turn.reference,
            text=text,
            outcome=outcome,
            model=self.generator.model,
            adapter_version=self.generator.adapter,
            **kwargs,
        )

    def _apology(self, turn: _Turn) -> Answer:
        return self._make(
            turn,
            "failed",
            f"Sorry, I couldn't answer that just now (reference {turn.reference}). "
            f"Please try again in a minute; if it keeps happening, contact "
            f"{self.policy.fallback_contact} and quote the reference.",
        )

    def _not_covered(self) -> str:
        return (
            f"I couldn't find this in the knowledge base, so I won't guess. Please ask {self.policy.fallback_contact}."
        )

    async def _serve_cached(self, turn: _Turn, payload: dict[str, Any], notice: str) -> AsyncIterator[AnswerEvent]:
        data = payload["answer"]
        answer = Answer(
            turn_id=turn.turn_id,
            reference=turn.reference,
            text=data["text"],
            outcome="answered",
            sources=[Source(**s) for s in data["sources"]],
            confidence=data["confidence"],
            cache_hit=True,
            model=data["model"],
            adapter_version=data["adapter_version"],
            notice=notice,
        )
        metrics.ANSWER_CACHE_HITS.inc()
        yield Delta(answer.text)
        await self._finish(
            turn,
            answer,
            TurnEnd(
                status="answered",
                answer=answer.text,
                prompt=payload["prompt"],
                cache_hit=True,
                cited=[s.chunk_id for s in answer.sources],
                **payload["common"],
            ),
        )
        yield Done(answer)

    @staticmethod
    def _served_chunk(hit: Hit) -> dict[str, Any]:
        c = hit.chunk
        return {
            "chunk_id": c.id,
            "doc_id": c.doc_id,
            "title": c.title,
            "heading": c.heading,
            "url": c.url,
            "groups": list(c.groups),
            "text": c.text,
            "score": round(hit.score, 4),
        }

    def _answer_key(self, question: str, message: IncomingMessage, kb_version: int) -> str:
        """Same question, same reader, same knowledge base, same model: same answer. The user key
        is part of the scope because answers may use that user's own context."""
        scope = ",".join(reader_groups(message.groups))
        raw = "|".join(
            [
                normalise_question(question),
                scope,
                message.user_key,
                str(kb_version),
                self.generator.model,
                self.generator.adapter,
                self.policy.prompt_version,
            ]
        )
        return f"answer:v{kb_version}:{user_tag(message.user_key)}:{hashlib.sha256(raw.encode()).hexdigest()}"

    async def _over_rate_limit(self, user_key: str) -> bool:
        window = int(time.time() // 60)
        count = await self.cache.incr(f"rate:{user_key}:{window}", ttl=61)
        return count > self.policy.rate_limit_per_minute

    async def _history(self, conversation_key: str) -> list[tuple[str, str]]:
        if not self.policy.history_turns:
            return []
        raw = await self.cache.get(f"hist:{conversation_key}")
        return [(str(asked), str(answered)) for asked, answered in json.loads(raw)] if raw else []

    async def _remember(
        self, conversation_key: str, history: list[tuple[str, str]], question: str, answer: str
    ) -> None:
        if not self.policy.history_turns:
            return
        kept = [*history, ("user", question), ("assistant", answer)][-2 * self.policy.history_turns :]
        await self.cache.set(f"hist:{conversation_key}", json.dumps(kept).encode(), ttl=HISTORY_TTL_SECONDS)

    async def _finish(self, turn: _Turn, answer: Answer, end: TurnEnd) -> None:
        turn.latency["total"] = round((time.perf_counter() - turn.started) * 1000, 2)
        metrics.STAGE_SECONDS.labels("total").observe(turn.latency["total"] / 1000)  # what alerts watch
        end.latency_ms = dict(turn.latency)
        turn.finished = True
        await self._record(turn, end)
        metrics.TURNS.labels(turn.message.platform, answer.outcome if not answer.cache_hit else "cached").inc()
        log.info(
            "turn.done turn=%s ref=%s platform=%s outcome=%s cache_hit=%s total_ms=%.0f",
            turn.turn_id,
            turn.reference,
            turn.message.platform,
            answer.outcome,
            answer.cache_hit,
            turn.latency["total"],
        )

    async def _record(self, turn: _Turn, end: TurnEnd) -> None:
        """Close the turn's record; a turn that ended before retrieval (a cache hit, a refusal)
        was never opened and is written whole, in one commit."""
        if turn.begun:
            await self._safely("finish", self.ledger.finish_turn(turn.turn_id, end))
        else:
            await self._safely("record", self.ledger.record_turn(turn.start, end))

    async def _safely(self, what: str, write: object) -> None:
        """A ledger write that must not stop the answer (the ledger spools outages itself; this
        catches what it could not)."""
        try:
            await write  # type: ignore[misc]
        except Exception:
            metrics.ERRORS.labels("ledger").inc()
            log.exception("ledger.write_failed what=%s", what)
