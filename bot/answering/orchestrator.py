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
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bot import metrics
from bot.answering.answerability import answerability, question_coverage
from bot.answering.evidence import Piece, content_terms, fact_pieces, numbers_in, pieces_of
from bot.answering.generation import GenerationError, Generator
from bot.answering.grounding import SentenceSupport, answer_sentences, check_support, without_citations
from bot.answering.intent import Intent, classify
from bot.answering.messages import Answer, AnswerEvent, Delta, Done, IncomingMessage, Outcome, Source, Status
from bot.answering.prompts import build_messages, cut_repetition, says_unknown
from bot.answering.quoting import Composition, asker_terms, compose
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart, new_turn_ids
from bot.ledger.tombstones import user_tag
from bot.settings import Settings
from retrieval.cache import Cache
from retrieval.records import Hit, UserProfile, reader_groups
from retrieval.search import Searcher, SearchResult, earlier_questions
from retrieval.users import asked_about, profile_facts

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
    answer_strategy: str = "auto"  # "auto", "quote" or "generate" (settings.answer_strategy)
    quote_passages: int = 5
    answerable_min: float = 0.56
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
            answer_strategy=settings.answer_strategy,
            quote_passages=settings.quote_passages,
            answerable_min=settings.answerable_min,
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


#: How many of the best hits the question's words are looked for in (answerability.py).
ANSWERABILITY_HITS = 5

#: A quoted answer also reads the chunks this close to the best hits of this many documents.
NEIGHBOUR_DOCS = 2
NEIGHBOUR_SPAN = 2

#: Two quoted pieces from different documents that share this much of their wording but not
#: their numbers are taken to disagree.
CONFLICT_OVERLAP = 0.6


@dataclass(frozen=True)
class _Evidence:
    """The passages of a turn as pieces (and the asker's facts), with their vectors."""

    question_vector: np.ndarray
    passages: list[Piece]
    passage_vectors: np.ndarray
    facts: list[Piece]
    fact_vectors: np.ndarray

    @property
    def all_pieces(self) -> list[Piece]:
        return [*self.passages, *self.facts]

    @property
    def all_vectors(self) -> np.ndarray:
        if not len(self.fact_vectors):
            return self.passage_vectors
        if not len(self.passage_vectors):
            return self.fact_vectors
        return np.vstack([self.passage_vectors, self.fact_vectors])


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

        intent = classify(question)
        if intent.kind != "question":
            answer = self._not_a_question(turn, intent)
            await self._finish(turn, answer, TurnEnd(status=answer.outcome, answer=answer.text, strategy="none"))
            yield Done(answer)
            return

        since = time.perf_counter()
        history = await self._history(message.conversation_key)
        since = turn.lap("history", since)

        search_text, truncated = self.searcher.prepare(question)
        notice = f"Your message was long, so I read its first {len(search_text):,} characters." if truncated else ""
        version, profile = await asyncio.gather(
            self.searcher.kb_version(), self._profile(message.user_key if policy.use_retrieval else "")
        )
        strategy = self._strategy()
        cache_key = None if history else self._answer_key(search_text, message, version, strategy, profile)
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
        wanted = max(policy.context_passages, policy.quote_passages if strategy == "quote" else ANSWERABILITY_HITS)
        asker_values = asked_about(profile, search_text) if profile else []
        if policy.use_retrieval:
            result = await self.searcher.search(
                search_text,
                groups=message.groups,
                k=wanted,
                user_key=message.user_key,
                earlier=earlier,
                kb_version=version,
                asker=asker_values,
            )
        else:
            result = SearchResult(query=search_text, hits=[], confidence=1.0, confident=True, kb_version=version)
        since = turn.lap("retrieval", since)
        retrieved = [self._served_chunk(h) for h in result.hits]
        searched = f"{earlier} | {result.query}" if earlier else result.query
        if asker_values:  # on record, so the search can be reproduced
            searched = f"{searched} [asker: {'; '.join(asker_values)}]"
        common: dict[str, Any] = {
            "search_query": searched,
            "retrieved": retrieved,
            "user_facts": result.user_facts,
            "kb_version": result.kb_version,
            "confidence": result.confidence,
            "model": self.generator.model,
            "adapter_version": self.generator.adapter,
            "prompt_version": policy.prompt_version,
            "strategy": strategy,
        }

        if not result.confident:
            answer = self._make(turn, "unknown", self._not_covered(), confidence=result.confidence, notice=notice)
            await self._finish(turn, answer, TurnEnd(status="unknown", answer=answer.text, **common))
            await self._remember(message.conversation_key, history, question, answer.text)
            yield Done(answer)
            return

        # What the passages say, piece by piece, and which piece answers best: the answerability
        # check both strategies make before anything is written. A quoted answer also reads the
        # chunks next to the best ones (the rest of a table cut across chunks) and everything the
        # directory says about the asker, so the row that applies to them can be chosen.
        # The prompt the model reads, built for quoted turns too: a lead's rating of a quoted
        # answer is a training example like any other, and retraining needs the prompt it
        # answers (passages and the asker's facts as the model would have seen them).
        prompt, tampered = build_messages(
            result.query, result.hits[: policy.context_passages], result.user_facts, version=policy.prompt_version
        )
        if tampered:
            log.warning("turn.instructions_removed turn=%s chunks=%s", turn.turn_id, ",".join(tampered))
        asker = profile_facts(profile) if profile and strategy == "quote" else []
        if strategy == "quote" and policy.use_retrieval:
            result = replace(result, hits=await self._with_neighbours(result.hits, message.groups))
            common["retrieved"] = [self._served_chunk(h) for h in result.hits]
            common["user_facts"] = list(dict.fromkeys([*result.user_facts, *asker]))
        evidence = await self._evidence(result, strategy)
        composition = Composition("")
        if evidence.passages and policy.use_retrieval:
            composition = compose(
                result.query,
                evidence.question_vector,
                evidence.passages,
                evidence.passage_vectors,
                asker_terms([*result.user_facts, *asker], message.user_name),
            )
            coverage = question_coverage(result.query, result.hits[: max(policy.context_passages, ANSWERABILITY_HITS)])
            score = answerability(composition.relevance, result.confidence, coverage)
            common["answerability"] = round(score, 4)
            if score < policy.answerable_min:
                answer = self._related_only(turn, result, notice)
                await self._finish(turn, answer, TurnEnd(status="unknown", answer=answer.text, **common))
                await self._remember(message.conversation_key, history, question, answer.text)
                yield Done(answer)
                return
        since = turn.lap("evidence", since)

        if strategy == "quote":
            if not composition.text.strip():  # nothing quotable (every line filtered, a bare header)
                answer = self._related_only(turn, result, notice)
                await self._finish(turn, answer, TurnEnd(status="unknown", answer=answer.text, prompt=prompt, **common))
                await self._remember(message.conversation_key, history, question, answer.text)
                yield Done(answer)
                return
            text = self._with_conflict_notice(composition, result)
            yield Delta(text)
        else:
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
                        status="failed",
                        answer=answer.text,
                        error=f"{type(exc).__name__}: {exc}",
                        prompt=prompt,
                        **common,
                    ),
                )
                yield Done(answer)
                return
            since = turn.lap("generation", since)
            text, looped = cut_repetition("".join(pieces).strip())
            if looped:
                log.info("turn.repetition_cut turn=%s", turn.turn_id)

        answer, support = await self._finalise(turn, text, result, evidence, notice, strategy, composition)
        turn.lap("grounding", since)
        unsupported = sum(1 for s in support if s.claims and not s.supported)
        if unsupported:
            metrics.UNSUPPORTED_SENTENCES.inc(unsupported)
        end = TurnEnd(
            status=answer.outcome,
            answer=answer.text,
            prompt=prompt,
            cited=[s.chunk_id for s in answer.sources],
            support=[s.to_dict() for s in support],
            unsupported=unsupported,
            **common,
        )
        await self._finish(turn, answer, end)
        await self._remember(message.conversation_key, history, question, answer.text)
        if cache_key and policy.answer_cache_ttl and answer.outcome == "answered":
            payload = {
                "answer": asdict(answer),
                "common": common,
                "prompt": prompt,
                "support": end.support,
                "unsupported": unsupported,
            }
            await self.cache.set(cache_key, json.dumps(payload).encode(), ttl=policy.answer_cache_ttl)
        yield Done(answer)

    # --- pieces ------------------------------------------------------------------------------
    def _strategy(self) -> str:
        """How this turn's answer is made: `quote` unless the operator chose otherwise, or a
        fine-tuned adapter is live (it was trained to answer the company's questions itself) and
        the gate did not find quoting better than its own answers (`Generator.adapter_strategy`)."""
        chosen = self.policy.answer_strategy
        if chosen in ("quote", "generate"):
            return chosen
        return "generate" if self.generator.adapter and self.generator.adapter_strategy != "quote" else "quote"

    async def _profile(self, user_key: str) -> UserProfile | None:
        """The asker's directory entry: the search reads the fields the question points at
        ("my office"), and a quoted answer everything it says (the search keeps only the facts
        nearest the question, which for "how many leave days do I get" is rarely the office).
        Read before the turn is on record, so a store that fails here costs the asker's context,
        never the question: the search that follows fails on record."""
        if not user_key:
            return None
        try:
            return await self.searcher.store.get_user(user_key)
        except Exception as exc:  # noqa: BLE001 (any store error: answer without the profile)
            log.warning("turn.profile_unavailable error=%s", type(exc).__name__)
            return None

    async def _with_neighbours(self, hits: list[Hit], groups: tuple[str, ...]) -> list[Hit]:
        """The hits, then the chunks next to the best ones in their documents: a table or a list
        of steps cut across chunks reaches the quoting whole. Neighbours come after the hits, so
        the hits keep their numbers; only chunks this reader may see are added."""
        allowed = set(reader_groups(groups))
        seen = {h.chunk.id for h in hits}
        extra: list[Hit] = []
        for hit in hits[:NEIGHBOUR_DOCS]:
            for chunk in await self.searcher.store.chunks_of(hit.chunk.doc_id):
                near = abs(chunk.position - hit.chunk.position) <= NEIGHBOUR_SPAN
                if near and chunk.id not in seen and set(chunk.groups) & allowed:
                    seen.add(chunk.id)
                    extra.append(Hit(chunk, 0.0))
        return [*hits, *extra]

    async def _evidence(self, result: SearchResult, strategy: str) -> _Evidence:
        """The passages as pieces, with their vectors and the question's: what quoting chooses
        from and what grounding checks against."""
        shown = result.hits if strategy == "quote" else result.hits[: self.policy.context_passages]
        passages = pieces_of(shown)
        facts = fact_pieces(result.user_facts)
        embedder = self.searcher.embedder
        question_vector = await embedder.embed_query(result.query)
        texts = [p.embed_text for p in [*passages, *facts]]
        vectors = await embedder.embed_many(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        return _Evidence(question_vector, passages, vectors[: len(passages)], facts, vectors[len(passages) :])

    async def _finalise(
        self,
        turn: _Turn,
        text: str,
        result: SearchResult,
        evidence: _Evidence,
        notice: str,
        strategy: str,
        composition: Composition,
    ) -> tuple[Answer, list[SentenceSupport]]:
        """The answer as sent: every sentence checked against the passages, the unsupported ones
        removed, each kept sentence cited to the passage that supports it (never to one that
        does not), and an "I don't know" turned into who to ask. A quoted answer is checked
        too (it should pass whole; the check is what the console shows either way)."""
        if strategy == "quote":
            sentences = answer_sentences(composition.text)
            vectors = await self.searcher.embedder.embed_many([without_citations(s) for s in sentences])
            support = check_support(sentences, vectors, evidence.all_pieces, evidence.all_vectors)
            sources = self._sources(result, [p.passage for p in composition.pieces])
            answer = self._make(turn, "answered", text, sources=sources, confidence=result.confidence, notice=notice)
            return answer, support
        if says_unknown(text):
            return self._make(
                turn, "unknown", f"{text}\n\n{self._not_covered()}".strip(), confidence=result.confidence, notice=notice
            ), []
        sentences = answer_sentences(text)
        vectors = await self.searcher.embedder.embed_many([without_citations(s) for s in sentences])
        support = check_support(sentences, vectors, evidence.all_pieces, evidence.all_vectors)
        # A small model likes to recite the "About the person asking" block ("The person asking
        # is Lukas Becker (lukas.becker@…)"): true, but no answer, and it spreads the person's
        # details into every copy of the answer. A sentence resting on the asker's facts stays
        # only when it is about what was asked ("Your office is in Berlin" to "where is my office").
        asked = set(content_terms(result.query))
        kept = [
            s
            for s in support
            if s.supported and not (s.passage == 0 and not asked & set(content_terms(without_citations(s.sentence))))
        ]
        if not any(s.claims for s in kept):
            return self._related_only(turn, result, notice), support
        lines, numbers = [], []
        for s in kept:
            bare = without_citations(s.sentence)
            if s.passage:
                numbers.append(s.passage)
                bare = f"{bare} [{s.passage}]"
            lines.append(bare)
        final = self._rejoin(text, lines)
        sources = self._sources(result, numbers)
        return self._make(
            turn, "answered", final, sources=sources, confidence=result.confidence, notice=notice
        ), support

    @staticmethod
    def _rejoin(original: str, lines: list[str]) -> str:
        """Kept sentences joined again: one per line when the model wrote a list, else prose."""
        listed = sum(1 for line in original.splitlines() if line.strip()[:2] in ("- ", "* ", "• "))
        return "\n".join(f"- {line}" for line in lines) if listed >= 2 else " ".join(lines)

    @staticmethod
    def _sources(result: SearchResult, numbers: list[int]) -> list[Source]:
        sources, seen_docs = [], set()
        for number in dict.fromkeys(numbers):
            if not 1 <= number <= len(result.hits):
                continue
            chunk = result.hits[number - 1].chunk
            if chunk.doc_id in seen_docs:
                continue
            seen_docs.add(chunk.doc_id)
            sources.append(Source(number, chunk.doc_id, chunk.title, chunk.url, chunk.heading, chunk.id))
        return sources

    def _with_conflict_notice(self, composition: Composition, result: SearchResult) -> str:
        """A quoted answer whose pieces come from documents that give different numbers for the
        same thing says so: the employee sees both, cited, and knows to check."""
        pieces = composition.pieces
        for i, a in enumerate(pieces):
            for b in pieces[i + 1 :]:
                if a.passage == b.passage or not (a.passage and b.passage):
                    continue
                doc_a = result.hits[a.passage - 1].chunk.doc_id
                doc_b = result.hits[b.passage - 1].chunk.doc_id
                if doc_a == doc_b:
                    continue
                words_a = {t for t in content_terms(a.text) if not t[:1].isdigit()}
                words_b = {t for t in content_terms(b.text) if not t[:1].isdigit()}
                shared = len(words_a & words_b) / max(1, min(len(words_a), len(words_b)))
                if shared >= CONFLICT_OVERLAP and numbers_in(a.text) and numbers_in(a.text) != numbers_in(b.text):
                    return (
                        f"{composition.text}\n\nThese documents disagree, so check with "
                        f"{self.policy.fallback_contact} before you rely on either."
                    )
        return composition.text

    def _not_a_question(self, turn: _Turn, intent: Intent) -> Answer:
        """A greeting or thanks gets a short kind reply; a question in another language is told
        the knowledge base is read in English. None of them is searched or generated."""
        if intent.kind == "greeting":
            return self._make(
                turn,
                "smalltalk",
                'Hi! Ask me anything about IT, HR, security or office questions, for example: "How do I '
                'reset my VPN password?"',
            )
        if intent.kind == "thanks":
            return self._make(turn, "smalltalk", "You're welcome! Ask me again any time.")
        return self._make(
            turn,
            "unknown",
            f"I can only read questions in English so far (yours looks like {intent.language_name}), and the "
            f"knowledge base is in English. Please ask again in English, or contact {self.policy.fallback_contact}.",
        )

    def _related_only(self, turn: _Turn, result: SearchResult, notice: str) -> Answer:
        """The honest answer when the passages are about the topic but do not answer the
        question: say so, name who to ask, and list the documents that came closest."""
        sources = self._sources(result, list(range(1, min(3, len(result.hits)) + 1)))
        titles = "; ".join(s.title for s in sources)
        text = (
            f"I found related documents, but they don't answer this, so I won't guess: {titles}. "
            f"Please ask {self.policy.fallback_contact}."
            if sources
            else self._not_covered()
        )
        return self._make(turn, "unknown", text, sources=sources, confidence=result.confidence, notice=notice)

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
                support=payload.get("support", []),
                unsupported=payload.get("unsupported", 0),
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

    def _answer_key(
        self, question: str, message: IncomingMessage, kb_version: int, strategy: str, profile: UserProfile | None
    ) -> str:
        """Same question, same reader, same knowledge base, same model: same answer. The user key
        and the asker's directory entry are part of the scope because answers use that user's
        own context: after a move to Berlin, "how many leave days do I get" is answered afresh."""
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
                strategy,
                profile.to_json() if profile else "",
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
