"""The service object: everything a running Deskmate holds (retrieval, the ledger, the model,
the orchestrator, the adapter registry, the job runner), typed, and importing no face. The
channels, the console and the CLI reach every part through it; bot/wiring.py builds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.answering.generation import Generator
from bot.answering.orchestrator import Orchestrator
from bot.feedback.roles import Roles
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnRow
from bot.settings import Settings
from bot.training.jobs import JobRunner
from finetune.registry import Registry
from retrieval.cache import Cache
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.search import Searcher
from retrieval.store import KnowledgeStore


@dataclass
class Retrieval:
    """The retrieval half of Deskmate, connected."""

    settings: Settings
    store: KnowledgeStore
    cache: Cache
    embedder: Embedder
    searcher: Searcher
    ingestor: Ingestor

    async def close(self) -> None:
        await self.store.close()
        await self.cache.close()


@dataclass
class Deskmate:
    """Everything a running Deskmate holds: retrieval, the ledger, the model, the orchestrator,
    who may do what, the adapter registry and where retraining jobs run."""

    settings: Settings
    retrieval: Retrieval
    ledger: Ledger
    generator: Generator
    orchestrator: Orchestrator
    roles: Roles
    # the adapters retraining produced, on the shared volume (finetune/registry.py)
    registry: Registry
    # runs retraining jobs: in this process, or on the Redis queue for `deskmate worker`
    jobs: JobRunner
    # platform -> posts a lead's correction into the conversation a turn came from (set by the
    # Slack and Teams adapters; the console calls it without importing either)
    correctors: dict[str, Callable[[TurnRow, str], Awaitable[bool]]] = field(default_factory=dict)
    # platform -> posts a notice into a turn's conversation (an answer interrupted by a replica
    # that died: bot/replicas.py)
    notifiers: dict[str, Callable[[TurnRow, str], Awaitable[bool]]] = field(default_factory=dict)

    async def close(self) -> None:
        await self.generator.close()
        await self.ledger.close()
        await self.retrieval.close()


@dataclass
class Records:
    """The ledger and the retrieval stack without a model: what admin commands (retrain,
    forget) need."""

    retrieval: Retrieval
    ledger: Ledger

    async def close(self) -> None:
        await self.ledger.close()
        await self.retrieval.close()
