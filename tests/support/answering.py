"""Asking the real orchestrator over the example handbook: who asks (people of
examples/users.csv), the message they send, and an orchestrator over a store with a generator."""

from __future__ import annotations

from bot.answering.generation import Generator
from bot.answering.messages import IncomingMessage
from bot.answering.orchestrator import Orchestrator, TurnPolicy
from bot.ledger.ledger import Ledger
from retrieval.cache import Cache, MemoryCache
from retrieval.embeddings import Embedder
from retrieval.search import Searcher
from retrieval.store import KnowledgeStore

LUKAS = dict(user_key="lukas.becker@northwind.example", user_name="Lukas Becker", groups=())
ANA = dict(user_key="ana.ribeiro@northwind.example", user_name="Ana Ribeiro", groups=("hr",))
CONTACT = "the IT service desk (#it-help)"


def msg(text: str, who: dict = LUKAS, thread: str = "t1", platform: str = "web") -> IncomingMessage:
    return IncomingMessage(platform=platform, text=text, channel="c1", thread_id=thread, **who)  # type: ignore[arg-type]


def orchestrator(
    store: KnowledgeStore,
    embedder: Embedder,
    ledger: Ledger,
    generator: Generator,
    cache: Cache | None = None,
    **policy: object,
) -> Orchestrator:
    cache = cache or MemoryCache()
    searcher = Searcher(store, Embedder(embedder.model_ref, cache=cache), cache)
    searcher.embedder._model = embedder._load()  # share the loaded weights across tests
    return Orchestrator(searcher, generator, ledger, cache, TurnPolicy(fallback_contact=CONTACT, **policy))  # type: ignore[arg-type]
