"""Which adapter is live, and changing it: promote, roll back, and the servers following along.

The registry (`finetune.registry`) holds the sealed adapter folders; the ledger holds the
history. The live adapter is whatever the newest promote/rollback event names ('' = the base
model), so every process and replica agrees without talking to each other: each server polls
that one row every few seconds and swaps its generator when it changes.

Promotion checks everything that could make it half-done before it writes the event: the folder
is intact (hashes), the base model is the one serving, and a generator of the serving kind
actually loads it (llama.cpp loads the GGUF LoRA; a TGI/vLLM server lists the version). Only
then is the event recorded, so a refused promotion leaves the live adapter untouched.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from bot.answering.generation import AdapterNotServed, EchoGenerator, Generator, LlamaCppGenerator, RemoteGenerator
from bot.ledger.ledger import Ledger
from bot.ledger.rows import AdapterEventRow, AdapterRow
from finetune.model import BASE_MODEL_ID
from finetune.registry import AdapterInfo, AdapterInvalid, BaseModelMismatch, Registry

log = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """The adapter cannot go live; the message says why. Nothing was changed."""


@dataclass
class AdapterView:
    name: str
    status: str
    created_at: datetime | None
    live: bool
    meta: dict[str, Any]


def serving_base(generator: Generator) -> str:
    """The base model id adapters must match: the bundled one locally (echo stands in for it in
    tests and load runs), the configured one remotely."""

    if isinstance(generator, LlamaCppGenerator | EchoGenerator):
        return BASE_MODEL_ID
    return generator.model or BASE_MODEL_ID


async def live_adapter(ledger: Ledger) -> str:
    """The adapter version that should be serving now ('' = the base model)."""
    async with ledger.sessions() as session:
        event = await session.scalar(select(AdapterEventRow).order_by(AdapterEventRow.id.desc()).limit(1))
    return event.adapter if event else ""


async def history(ledger: Ledger, limit: int = 50) -> list[AdapterEventRow]:
    async with ledger.sessions() as session:
        return list(await session.scalars(select(AdapterEventRow).order_by(AdapterEventRow.id.desc()).limit(limit)))


async def record_candidate(ledger: Ledger, info: AdapterInfo, status: str) -> None:
    """The adapter's row: `candidate` (passed the gate, not live), `rejected` (failed it)."""
    meta = {
        k: info.metadata.get(k)
        for k in (
            "base_model",
            "base_revision",
            "started_by",
            "job_id",
            "dataset_card",
            "training",
            "train_config",
            "evaluation",
        )
    }
    async with ledger.sessions.begin() as session:
        session.add(
            AdapterRow(
                name=info.name,
                created_at=datetime.now(UTC),
                base_model=info.metadata.get("base_model", ""),
                path=str(info.path),
                status=status,
                meta=meta,
            )
        )


async def list_adapters(ledger: Ledger) -> list[AdapterView]:
    live = await live_adapter(ledger)
    async with ledger.sessions() as session:
        rows = list(await session.scalars(select(AdapterRow).order_by(AdapterRow.created_at.desc())))
    return [AdapterView(r.name, r.status, r.created_at, r.name == live, r.meta or {}) for r in rows]


async def to_serve(ledger: Ledger, *, previous: int = 2, candidates: int = 2) -> list[str]:
    """The versions a model server that loads adapters only at start-up (TGI) should list: the
    live one, the ones live before it (so `rollback` needs no restart) and the newest candidates
    that passed the gate (so `promote` needs none either). Newest first, no duplicates."""
    names: list[str] = []
    for event in await history(ledger, limit=50):
        for name in (event.adapter, event.previous):
            if name and name not in names and len(names) < 1 + previous:
                names.append(name)
    waiting = [a.name for a in await list_adapters(ledger) if a.status == "candidate"]
    names += [n for n in waiting if n not in names][:candidates]
    return names


def lora_adapters_value(names: list[str], root: str) -> str:
    """TGI's `LORA_ADAPTERS`: `id=path` pairs, comma-separated, paths as the server mounts them."""
    return ",".join(f"{name}={root.rstrip('/')}/{name}" for name in names)


async def get_adapter(ledger: Ledger, name: str) -> AdapterRow | None:
    async with ledger.sessions() as session:
        return await session.get(AdapterRow, name)


async def check_loadable(info: AdapterInfo, generator: Generator) -> None:
    """Prove a generator of the serving kind can serve the adapter, without touching the live one."""
    if isinstance(generator, LlamaCppGenerator):
        probe = LlamaCppGenerator(generator.model_path, n_ctx=256, n_threads=1)
        try:
            await probe.use_adapter(info.name, info.gguf)
        finally:
            await probe.close()
    elif isinstance(generator, RemoteGenerator):
        served = await generator.served_models()
        if info.name not in served:
            raise AdapterNotServed(
                f"the model server does not list {info.name} yet: add it to TGI's LORA_ADAPTERS and "
                "roll the servers, or load it into vLLM (/v1/load_lora_adapter), then promote again"
            )


async def _verified(registry: Registry, name: str, generator: Generator) -> AdapterInfo:
    try:
        info = registry.get(name)
        registry.check_base(info, serving_base(generator), None)
        await check_loadable(info, generator)
    except (AdapterInvalid, BaseModelMismatch, AdapterNotServed) as exc:
        raise PromotionRefused(str(exc)) from None
    return info


async def _record(ledger: Ledger, action: str, name: str, previous: str, actor: str, note: str) -> None:
    async with ledger.sessions.begin() as session:
        session.add(
            AdapterEventRow(
                created_at=datetime.now(UTC), adapter=name, action=action, actor=actor, note=note, previous=previous
            )
        )
        if previous:
            await session.execute(update(AdapterRow).where(AdapterRow.name == previous).values(status="retired"))
        if name:
            await session.execute(update(AdapterRow).where(AdapterRow.name == name).values(status="live"))


async def promote(
    ledger: Ledger,
    registry: Registry,
    name: str,
    *,
    actor: str,
    generator: Generator,
    note: str = "",
    force: bool = False,
) -> AdapterInfo:
    """Put `name` live after every check; `force` allows an adapter the gate rejected."""
    row = await get_adapter(ledger, name)
    if row is None:
        raise PromotionRefused(f"no adapter version {name!r} in the ledger (see `deskmate adapters list`)")
    if row.status == "rejected" and not force:
        raise PromotionRefused(
            f"{name} did not pass the evaluation gate; promoting it anyway needs force "
            "(--force in the CLI, the force box in the console)"
        )
    current = await live_adapter(ledger)
    if current == name:
        raise PromotionRefused(f"{name} is already live")
    info = await _verified(registry, name, generator)
    await _record(ledger, "promote", name, current, actor, note)
    log.info("adapter.promoted name=%s previous=%s actor=%s", name, current or "base", actor)
    return info


async def rollback(ledger: Ledger, registry: Registry, *, actor: str, generator: Generator) -> str:
    """Go back to what was live before the current adapter ('' = the base model)."""
    events = await history(ledger, limit=1)
    if not events or not events[0].adapter:
        raise PromotionRefused("the base model is live: there is nothing to roll back")
    target = events[0].previous
    if target:
        await _verified(registry, target, generator)
    await _record(ledger, "rollback", target, events[0].adapter, actor, f"rolled back {events[0].adapter}")
    log.info("adapter.rolled_back to=%s from=%s actor=%s", target or "base", events[0].adapter, actor)
    return target


async def apply_live(ledger: Ledger, registry: Registry, generator: Generator) -> str:
    """Make the generator serve the live adapter if it does not already. A live adapter that
    cannot be served (deleted folder, server not updated) is logged and the current one kept."""
    name = await live_adapter(ledger)
    if name == generator.adapter and (not name or generator.adapter_strategy):
        return name
    try:
        if name:
            info = registry.get(name)
            registry.check_base(info, serving_base(generator), None)
            if name != generator.adapter:  # already loaded at start-up (DESKMATE_ADAPTER): not again
                await generator.use_adapter(name, info.gguf)
            generator.adapter_strategy = measured_strategy(info)
        else:
            await generator.use_adapter("")
            generator.adapter_strategy = ""
    except (AdapterInvalid, BaseModelMismatch, AdapterNotServed) as exc:
        log.error("adapter.not_applied live=%s serving=%s reason=%s", name or "base", generator.adapter or "base", exc)
        return generator.adapter
    log.info("adapter.serving name=%s", name or "base")
    return name


def measured_strategy(info: AdapterInfo) -> str:
    """How the gate found this adapter answers best: "quote" or "generate" (an adapter
    evaluated before the gate compared it with quoting writes, as it did then)."""
    strategy = (info.metadata.get("evaluation") or {}).get("strategy") or {}
    return "quote" if strategy.get("answer_strategy") == "quote" else "generate"


async def follow_live(ledger: Ledger, registry: Registry, generator: Generator, every: float) -> None:
    """Poll the ledger and hot-swap; runs for the life of the server."""
    while True:
        try:
            await apply_live(ledger, registry, generator)
        except Exception as exc:  # noqa: BLE001 (a ledger outage must not end the loop)
            log.warning("adapter.poll_failed error=%s", exc)
        await asyncio.sleep(every)
