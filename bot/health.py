"""Readiness: each part's state, checked now, for `/readyz` and the on-call engineer.

Kept apart from the server so that what "ready" means (every backend answers, no ledger write
is stuck) is one function the ledger's owner can read and test without the HTTP layer.

The ledger is not ready while writes wait in the spool: the ping replays the spool whenever
the database answers, so writes still waiting after it mean either an outage or a stuck ledger
(the database answers but will not take them), and either way the turns are not in the console.
Dead letters are reported (count and file) but leave readiness alone: one row the database
refused is a data problem for an operator, and taking every replica out of the Service for it
would turn it into an outage; the dead-letter metric and its alert call the operator instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot import metrics
from bot.deskmate import Deskmate


async def readiness(deskmate: Deskmate) -> dict[str, dict[str, object]]:
    """Each part's state, checked now (with a short timeout each)."""

    async def check(name: str, probe: Callable[[], Awaitable[object]]) -> tuple[str, dict[str, object]]:
        try:
            ok = bool(await asyncio.wait_for(probe(), timeout=3))
            return name, {"ok": ok}
        except Exception as exc:  # noqa: BLE001
            return name, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}

    results = dict(
        await asyncio.gather(
            check("store", deskmate.retrieval.store.ping),
            check("cache", deskmate.retrieval.cache.ping),
            check("ledger", deskmate.ledger.ping),
            check("generator", deskmate.generator.ping),
        )
    )
    results["ledger"].update(ledger_state(deskmate, answered=bool(results["ledger"]["ok"])))
    return results


def ledger_state(deskmate: Deskmate, *, answered: bool) -> dict[str, object]:
    """The spool and the dead letters, from the files (a CLI or a gone replica may have
    written them too); turns the ledger part not-ok while writes wait. `answered`: the ping
    reached the database (and so replayed what it could)."""
    ledger = deskmate.ledger
    spooled = ledger.spooled()
    dead = ledger.dead_letters()
    metrics.LEDGER_SPOOLED.set(spooled)
    metrics.LEDGER_DEAD_LETTER_ROWS.set(dead)
    state: dict[str, object] = {}
    if spooled:
        state["ok"] = False
        state["spooled_writes"] = spooled
        if answered:
            state["error"] = (
                f"{spooled} writes wait in the spool although the database answers: "
                "it does not take them (see the log for ledger.unavailable)"
            )
    if dead:
        state["dead_letters"] = dead
        state["dead_letter_file"] = str(ledger.spool.dead_letter_path)
    return state
