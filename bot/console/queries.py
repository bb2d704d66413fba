"""What the console reads from the ledger: the review queue, one turn with its context, the
dashboard's series and the rated-turns dataset. Written for SQLite and PostgreSQL alike."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select

from bot.answering.orchestrator import normalise_question
from bot.ledger.filters import Filters
from bot.ledger.ledger import Ledger
from bot.ledger.review import LEAD_ROLES, is_lead_review
from bot.ledger.rows import FeedbackRow, TurnRow

PAGE_SIZE = 50


@dataclass
class QueueRow:
    turn: TurnRow
    thumbs_up: int = 0
    thumbs_down: int = 0
    last_score: int | None = None
    last_verdict: str | None = None


async def queue(ledger: Ledger, filters: Filters, page: int = 0) -> tuple[list[QueueRow], bool]:
    """Unreviewed first, riskiest first, newest first; returns a page and whether more follow."""
    query = (
        filters.apply(select(TurnRow))
        .order_by(TurnRow.reviewed.asc(), TurnRow.risk.desc(), TurnRow.created_at.desc())
        .offset(page * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    )
    async with ledger.sessions() as session:
        turns = list(await session.scalars(query))
        more = len(turns) > PAGE_SIZE
        turns = turns[:PAGE_SIZE]
        rows = {t.id: QueueRow(t) for t in turns}
        if rows:
            ratings = await session.execute(
                select(
                    FeedbackRow.turn_id,
                    FeedbackRow.thumb,
                    FeedbackRow.score,
                    FeedbackRow.verdict,
                    FeedbackRow.rater_role,
                    FeedbackRow.correction,
                )
                .where(FeedbackRow.turn_id.in_(list(rows)))
                .order_by(FeedbackRow.created_at, FeedbackRow.id)
            )
            for r in ratings:
                row = rows[r.turn_id]
                row.thumbs_up += r.thumb == 1
                row.thumbs_down += r.thumb == -1
                if is_lead_review(r.rater_role, r.score, r.verdict, r.correction):
                    row.last_score, row.last_verdict = r.score, r.verdict
    return list(rows.values()), more


@dataclass
class TurnView:
    turn: TurnRow
    before: list[TurnRow]
    ratings: list[FeedbackRow]
    next_id: str | None = None


async def turn_view(ledger: Ledger, turn_id: str) -> TurnView | None:
    """A turn with the exchanges before it in its thread and every rating so far."""
    async with ledger.sessions() as session:
        turn = await session.get(TurnRow, turn_id)
        if turn is None:
            return None
        before = list(
            await session.scalars(
                select(TurnRow)
                .where(
                    TurnRow.platform == turn.platform,
                    TurnRow.workspace == turn.workspace,
                    TurnRow.channel == turn.channel,
                    TurnRow.thread_id == turn.thread_id,
                    TurnRow.created_at < turn.created_at,
                    TurnRow.id != turn.id,
                )
                .order_by(TurnRow.created_at.desc())
                .limit(5)
            )
        )
    return TurnView(
        turn, list(reversed(before)), await ledger.ratings_of(turn_id), await next_unreviewed(ledger, turn_id)
    )


async def next_unreviewed(ledger: Ledger, after: str) -> str | None:
    """The riskiest unreviewed turn other than `after`: where "save and next" goes."""
    async with ledger.sessions() as session:
        return await session.scalar(
            select(TurnRow.id)
            .where(TurnRow.reviewed.is_(False), TurnRow.status != "pending", TurnRow.id != after)
            .order_by(TurnRow.risk.desc(), TurnRow.created_at.desc())
            .limit(1)
        )


# --- the dashboard ---------------------------------------------------------------------------


@dataclass
class Dashboard:
    days: list[str] = field(default_factory=list)
    turns_by_platform: dict[str, list[int]] = field(default_factory=dict)
    thumbs_up: list[int] = field(default_factory=list)
    thumbs_down: list[int] = field(default_factory=list)
    score_by_adapter: dict[str, list[float | None]] = field(default_factory=dict)
    latency: dict[str, list[float | None]] = field(default_factory=dict)
    unanswered: list[Unanswered] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class Unanswered:
    """A question the knowledge base could not answer, how often it came, and who asked it
    first (the page names them, or in pseudonymous mode replaces their name in it)."""

    question: str
    count: int
    user_key: str
    user_name: str


def _day(value: datetime) -> str:
    return value.date().isoformat()


async def dashboard(ledger: Ledger, days: int = 30) -> Dashboard:
    """The last `days` days, one value per day (None where nothing happened)."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    labels = [(start + timedelta(days=i)).date().isoformat() for i in range(days)]
    index = {d: i for i, d in enumerate(labels)}
    out = Dashboard(days=labels, thumbs_up=[0] * days, thumbs_down=[0] * days)
    latencies: dict[str, list[float]] = defaultdict(list)
    unanswered: Counter[str] = Counter()
    examples: dict[str, tuple[str, str, str]] = {}
    async with ledger.sessions() as session:
        turns = await session.execute(
            select(TurnRow.created_at, TurnRow.platform, TurnRow.latency_ms).where(
                TurnRow.created_at >= start, TurnRow.status != "pending"
            )
        )
        for created, platform, latency in turns:
            day = _day(created)
            if day not in index:
                continue
            out.turns_by_platform.setdefault(platform, [0] * days)[index[day]] += 1
            total = (latency or {}).get("total")
            if total is not None:
                latencies[day].append(float(total))
        questions = await session.execute(
            select(TurnRow.question, TurnRow.user_key, TurnRow.user_name).where(
                TurnRow.created_at >= start, TurnRow.status == "unknown"
            )
        )
        for question, user_key, user_name in questions:
            key = normalise_question(question)[:120]
            unanswered[key] += 1
            examples.setdefault(key, (question[:200], user_key, user_name or ""))
        ratings = await session.execute(
            select(
                FeedbackRow.created_at,
                FeedbackRow.thumb,
                FeedbackRow.score,
                FeedbackRow.rater_role,
                TurnRow.adapter_version,
            )
            .join(TurnRow, TurnRow.id == FeedbackRow.turn_id)
            .where(FeedbackRow.created_at >= start)
        )
        scores: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for created, thumb, score, role, adapter in ratings:
            day = _day(created)
            if day not in index:
                continue
            if thumb == 1:
                out.thumbs_up[index[day]] += 1
            elif thumb == -1:
                out.thumbs_down[index[day]] += 1
            if score is not None and role in LEAD_ROLES:
                scores[adapter or "base model"][day].append(score)
        out.totals = {
            "turns": int(await session.scalar(select(func.count()).select_from(TurnRow)) or 0),
            "unreviewed": int(
                await session.scalar(
                    select(func.count())
                    .select_from(TurnRow)
                    .where(TurnRow.reviewed.is_(False), TurnRow.status != "pending")
                )
                or 0
            ),
            "ratings": int(await session.scalar(select(func.count()).select_from(FeedbackRow)) or 0),
            "private": int(await session.scalar(select(func.sum(case((TurnRow.private, 1), else_=0)))) or 0),
        }
    for adapter, per_day in scores.items():
        out.score_by_adapter[adapter] = [
            round(statistics.mean(per_day[d]), 2) if per_day.get(d) else None for d in labels
        ]
    by_day = [sorted(latencies.get(d, [])) for d in labels]
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out.latency[name] = [round(v[min(len(v) - 1, int(len(v) * q / 100))], 1) if v else None for v in by_day]
    out.unanswered = [
        Unanswered(examples[k][0], n, examples[k][1], examples[k][2]) for k, n in unanswered.most_common(10)
    ]
    return out
