"""Shared fixtures: real Redis and PostgreSQL on this machine, isolated per run, the example
handbook ingested once, the CPU model, and the running servers the channel and console tests
share. Helpers a test calls live in tests/support/, never here.

Each run uses its own Redis key prefix and its own PostgreSQL databases and removes them at the
end, so runs never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bot.ledger.ledger import Ledger
from retrieval.backends import open_store
from retrieval.cache import Cache, MemoryCache, RedisCache
from retrieval.embeddings import Embedder
from retrieval.store import KnowledgeStore
from tests.support.console import console_settings, seed
from tests.support.platforms import ANA, chat_settings, platforms_stand_in
from tests.support.recorder import Recorder
from tests.support.server import RunningServer, ServerFactory, running_server
from tests.support.services import EXAMPLE_KB, EXAMPLE_USERS, REDIS_URL, RUN_ID, fresh_pg_database


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One MiniLM for the whole run (loading it takes seconds)."""
    return Embedder()


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"deskmate-test-{RUN_ID}:"
    yield prefix
    cleaner = RedisCache(REDIS_URL, prefix=prefix)
    await cleaner.clear()
    await cleaner.close()


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Cache]:
    """Every cache backend this machine can start."""
    if request.param == "memory":
        yield MemoryCache(max_entries=1000)
        return
    backend = RedisCache(REDIS_URL, prefix=f"{redis_prefix}{uuid.uuid4().hex[:6]}:")
    if not await backend.ping():
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: `make test` should have started it")
    yield backend
    await backend.clear()
    await backend.close()


@pytest.fixture(params=["lancedb", "weaviate"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder) -> AsyncIterator[KnowledgeStore]:
    """Every knowledge-store backend this machine can start (Weaviate only with WEAVIATE_URL)."""
    if request.param == "lancedb":
        backend = await open_store(f"lancedb://{tmp_path / 'kb'}", dim=embedder.dim)
        yield backend
        await backend.close()
        return
    url = os.environ.get("WEAVIATE_URL")
    if not url:
        pytest.skip("Weaviate contract run skipped: WEAVIATE_URL is not set (no Weaviate server here)")
    from retrieval.store_weaviate import WeaviateStore

    prefix = f"T{RUN_ID}{uuid.uuid4().hex[:4]}"
    backend = await WeaviateStore.connect(
        url, dim=embedder.dim, api_key=os.environ.get("WEAVIATE_API_KEY"), prefix=prefix
    )
    yield backend
    await backend.drop_all()
    await backend.close()


@pytest.fixture
def kb_copy(tmp_path: Path) -> Iterator[Path]:
    """A private copy of the example knowledge base, safe to modify."""
    import shutil

    target = tmp_path / "kb-copy"
    shutil.copytree(EXAMPLE_KB, target)
    yield target


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every ledger backend this machine runs: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def ledger(ledger_url: str, tmp_path: Path):
    """A migrated ledger on every backend."""
    backend = Ledger(ledger_url, tmp_path / "spool.jsonl")
    await backend.migrate()
    yield backend
    await backend.close()


# --- the example handbook, ingested once per run ---------------------------------------------


@pytest.fixture(scope="session")
async def example_store_url(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> str:
    """The example knowledge base and directory ingested once into a LanceDB folder."""
    from retrieval.ingest import Ingestor
    from retrieval.users import import_users, load_directory

    url = f"lancedb://{tmp_path_factory.mktemp('example') / 'kb'}"
    store = await open_store(url, dim=embedder.dim)
    report = await Ingestor(store, embedder).ingest_path(EXAMPLE_KB)
    assert report.ok, report.failed
    await import_users(load_directory(EXAMPLE_USERS).profiles, store, embedder)
    await store.close()
    return url


@pytest.fixture(scope="session")
async def example_store(example_store_url: str, embedder: Embedder) -> AsyncIterator[KnowledgeStore]:
    """The example store, shared read-only by tests."""
    store = await open_store(example_store_url, dim=embedder.dim)
    yield store
    await store.close()


@pytest.fixture
def private_store_url(example_store_url: str, tmp_path: Path) -> str:
    """A copy of the example store for a test that changes it (the shared one stays read-only)."""
    import shutil

    target = tmp_path / "private-kb"
    shutil.copytree(example_store_url.removeprefix("lancedb://"), target)
    return f"lancedb://{target}"


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    from finetune.model import base_gguf_path

    return base_gguf_path()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the base model converted for training, shared by the run (~20 s once)."""
    from finetune.model import hf_base_folder

    folder = tmp_path_factory.mktemp("model-cache")
    hf_base_folder(folder)
    return folder


@pytest.fixture(scope="session")
def blank_adapter(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, untrained LoRA adapter (B = 0: it answers exactly as the base model) in the
    registry's file layout: PEFT files plus the GGUF LoRA. For tests of promotion mechanics
    that do not need a trained one."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.gguf_lora import convert
    from finetune.model import hf_base_folder
    from finetune.train import LORA_TARGETS

    base = hf_base_folder(model_cache)
    folder = tmp_path_factory.mktemp("blank-adapter")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
    )
    model.save_pretrained(str(folder))
    convert(folder, json.loads((base / "config.json").read_text()), folder / "adapter.gguf")
    return folder


@pytest.fixture(scope="session")
async def local_generator(gguf_path: Path):
    """One llama.cpp model for the whole run, as `deskmate serve` holds one."""
    from bot.answering.generation import LlamaCppGenerator

    generator = LlamaCppGenerator(gguf_path, n_threads=2)
    await generator.load()
    yield generator
    await generator.close()


# --- servers the channel and console tests share ------------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with platforms_stand_in() as rec:
        yield rec


@pytest.fixture
def serve_chat(
    tmp_path: Path, example_store_url: str, embedder: Embedder, redis_prefix: str, recorder: Recorder
) -> ServerFactory:
    """Starts a chat server (Slack and Teams on the recorder) with settings of the test's own:
    `async with serve_chat(admins=[ANA]) as server:`; `chat_settings` gives the rest."""

    def serve(**overrides: object) -> AbstractAsyncContextManager[RunningServer]:
        settings = chat_settings(tmp_path, example_store_url, redis_prefix, recorder, **overrides)
        return running_server(embedder, **settings)

    return serve


@pytest.fixture
def serve_console(tmp_path: Path, example_store_url: str, embedder: Embedder, redis_prefix: str) -> ServerFactory:
    """Starts a console server with settings of the test's own (`store_url=` for another store):
    `async with serve_console(console_pseudonymous=True) as server:`; `console_settings` gives the rest."""

    def serve(*, store_url: str = example_store_url, **overrides: object) -> AbstractAsyncContextManager[RunningServer]:
        return running_server(embedder, **console_settings(tmp_path, store_url, redis_prefix, **overrides))

    return serve


@pytest.fixture
async def chat_server(serve_chat: ServerFactory) -> AsyncIterator[RunningServer]:
    async with serve_chat() as running:
        yield running


@pytest.fixture
async def lead_server(serve_chat: ServerFactory) -> AsyncIterator[RunningServer]:
    """Ana (U2 in Slack, 29:ana in Teams) is a support lead by her email; Lukas an employee."""
    async with serve_chat(leads=[ANA]) as running:
        yield running


@pytest.fixture
async def console_server(serve_console: ServerFactory) -> AsyncIterator[RunningServer]:
    """A running Deskmate (default console settings) with the console's example turns answered."""
    async with serve_console() as server:
        server.turn_ids = await seed(server)  # type: ignore[attr-defined]
        yield server


@pytest.fixture
async def sqlite_ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    """A migrated SQLite ledger of this test's own."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "spool.jsonl")
    await ledger.migrate()
    yield ledger
    await ledger.close()
