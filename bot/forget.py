"""`deskmate forget USER`: remove a person from everywhere Deskmate keeps them.

The ledger (their turns, every rating of those turns, the ratings they gave, their console
tokens), the cache (thread histories, cached answers, rate counters, identity lookups) and the
store (their directory entry and user-context facts). Returns what was removed, for the admin
to keep as the record of the request.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from bot.orchestrator import user_tag

if TYPE_CHECKING:
    from bot.app import Deskmate, Records

log = logging.getLogger(__name__)


async def forget(deskmate: Deskmate | Records, user: str) -> dict[str, Any]:
    key = user.strip().lower()
    report = await deskmate.ledger.forget_user(key)
    cache = deskmate.retrieval.cache

    histories = [f"hist:{c}" for c in report.pop("conversations")]
    present = [k for k in histories if await cache.get(k) is not None]
    answers = await cache.keys(f"answer:*:{user_tag(key)}:*")
    counters = await cache.keys(f"rate:{key}:*")
    identities = []
    for pattern in ("slack-user:*", "teams-user:*"):
        for cache_key in await cache.keys(pattern):
            raw = await cache.get(cache_key)
            if raw and (json.loads(raw)[0] or "").strip().lower() == key:
                identities.append(cache_key)
    await cache.delete(*present, *answers, *counters, *identities)
    report["cached_histories"] = len(present)
    report["cached_answers"] = len(answers)
    report["cached_identities"] = len(identities)
    report["directory_entries_and_facts"] = await deskmate.retrieval.store.delete_user(key)
    log.warning("forget.done user=%s report=%s", key, report)
    return report
