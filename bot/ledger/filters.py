"""Which turns: the filters of the review queue and of the rated-turns export (the console's
query parameters, `deskmate export ratings`' options), as one SQL condition on the turns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_

from bot.ledger.rows import FeedbackRow, TurnRow


class Support(StrEnum):
    """What the sentence check found in an answer (`support=` in the queue and the export)."""

    unsupported = "unsupported"  # at least one claim the passages did not support (removed from it)
    supported = "supported"  # an answer whose every claim the passages support


@dataclass
class Filters:
    """The queue's and the export's filters, from query parameters."""

    platform: str = ""
    channel: str = ""
    since: date | None = None
    until: date | None = None
    verdict: str = ""
    text: str = ""
    status: str = ""
    support: str = ""  # a `Support` value, or "" for any
    rated_only: bool = False

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        def day(value: str) -> date | None:
            try:
                return date.fromisoformat(value) if value else None
            except ValueError:
                return None

        support = query.get("support", "").strip()
        return cls(
            platform=query.get("platform", "").strip(),
            channel=query.get("channel", "").strip(),
            since=day(query.get("since", "")),
            until=day(query.get("until", "")),
            verdict=query.get("verdict", "").strip(),
            text=query.get("q", "").strip()[:200],
            status=query.get("status", "").strip(),
            support=support if support in {s.value for s in Support} else "",
        )

    def as_query(self) -> dict[str, str]:
        return {
            k: v
            for k, v in {
                "platform": self.platform,
                "channel": self.channel,
                "since": self.since.isoformat() if self.since else "",
                "until": self.until.isoformat() if self.until else "",
                "verdict": self.verdict,
                "q": self.text,
                "status": self.status,
                "support": self.support,
            }.items()
            if v
        }

    def apply(self, query: Select[Any]) -> Select[Any]:
        conditions = [TurnRow.status != "pending"]
        if self.platform:
            # `platform || ''` keeps SQLite from answering through the thread index (platform
            # first) and sorting half the table: walking the queue index and filtering stops
            # after one page (bench/console_load.py: p95 158 ms -> see README).
            conditions.append(TurnRow.platform.concat("") == self.platform)
        if self.channel:
            conditions.append(TurnRow.channel == self.channel)
        if self.status:
            conditions.append(TurnRow.status == self.status)
        if self.support == Support.unsupported:
            conditions.append(TurnRow.unsupported > 0)
        elif self.support == Support.supported:
            # Old turns (before the sentence check) and turns with nothing to check have an empty
            # list: "fully supported" means checked and clean, not merely never flagged.
            conditions += [
                TurnRow.status == "answered",
                TurnRow.unsupported == 0,
                func.json_array_length(TurnRow.support) > 0,
            ]
        if self.since:
            conditions.append(TurnRow.created_at >= datetime.combine(self.since, datetime.min.time(), UTC))
        if self.until:
            conditions.append(
                TurnRow.created_at < datetime.combine(self.until + timedelta(days=1), datetime.min.time(), UTC)
            )
        if self.text:
            pattern = f"%{self.text.lower()}%"
            conditions.append(or_(func.lower(TurnRow.question).like(pattern), func.lower(TurnRow.answer).like(pattern)))
        if self.verdict:
            conditions.append(
                exists().where(and_(FeedbackRow.turn_id == TurnRow.id, FeedbackRow.verdict == self.verdict))
            )
        if self.rated_only:
            conditions.append(exists().where(FeedbackRow.turn_id == TurnRow.id))
        return query.where(*conditions)
