"""Shared fixtures: real Redis and PostgreSQL on this machine, isolated per run.

Each run uses its own Redis key prefix (and, from the ledger issue on, its own database) and
removes them at the end, so runs never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval.cache import Cache, MemoryCache, RedisCache
from retrieval.embeddings import Embedder
from retrieval.store import KnowledgeStore, open_store

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_KB = REPO / "examples" / "kb"
EXAMPLE_USERS = REPO / "examples" / "users.csv"
REDIS_URL = os.environ.get("DESKMATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


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


# --- the ledger: SQLite, and databases of this run's own on the real PostgreSQL -------------

PG_ADMIN_DSN = os.environ.get("DESKMATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({exc}): `make test` should have started it")
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new PostgreSQL database named after this run, dropped afterwards."""
    name = f"deskmate_test_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def missing_pg_database(suffix: str) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A real outage: the URL of a PostgreSQL database that does not exist yet, and a function
    that creates it (bringing the ledger back). Dropped at the end."""
    name = f"deskmate_test_{RUN_ID}_{suffix}"

    async def create() -> None:
        await _pg_admin(f'CREATE DATABASE "{name}"')

    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}", create
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from bot.ledger import Ledger

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
    from bot.generation import LlamaCppGenerator

    generator = LlamaCppGenerator(gguf_path, n_threads=2)
    await generator.load()
    yield generator
    await generator.close()


# --- a running `deskmate serve` ----------------------------------------------------------------


@dataclass
class RunningServer:
    url: str
    deskmate: object
    settings: object


@contextlib.asynccontextmanager
async def running_server(embedder: Embedder, **overrides: object) -> AsyncIterator[RunningServer]:
    """`deskmate serve` in this process on a free port: the real app over real HTTP."""
    from aiohttp import web

    from bot.app import build_web_app, open_deskmate
    from bot.settings import Settings

    settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
    deskmate = await open_deskmate(settings, embedder=embedder)
    runner = web.AppRunner(build_web_app(deskmate), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", deskmate, settings)
    finally:
        await runner.cleanup()
        await deskmate.close()


async def register_adapter(
    deskmate: object,
    source: Path,
    *,
    status: str = "candidate",
    base_model: str | None = None,
    started_by: str = "tests",
) -> str:
    """Put an adapter folder into the running Deskmate's registry and ledger, as a finished
    retraining job would; returns its new version name."""
    from bot import adapters
    from finetune.model import BASE_MODEL_ID
    from finetune.registry import new_name

    name = new_name(BASE_MODEL_ID)
    info = deskmate.retrainer().registry.register(
        name,
        source,
        {  # type: ignore[attr-defined]
            "base_model": base_model or BASE_MODEL_ID,
            "started_by": started_by,
            "evaluation": {
                "candidate": {"token_f1": 0.5},
                "live": {"token_f1": 0.4},
                "decision": {"promote": status != "rejected", "reasons": ["set by the test"]},
            },
        },
    )
    await adapters.record_candidate(deskmate.ledger, info, status)  # type: ignore[attr-defined]
    return name
