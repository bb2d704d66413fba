"""The answerability threshold, calibrated on what leads said about real turns.

`DESKMATE_ANSWERABLE_MIN` ships at a value read off the benchmark sets (README, "Answer
quality"); every company's documents and questions differ. Leads mark turns "should not answer"
and approve or correct others; each turn recorded its answerability score. This module reads
both and says, for each threshold, how many should-not-answer turns Deskmate would have declined
and how many good ones it would still have answered, and which threshold keeps the answered
share at the target while declining the most.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from bot.ledger.ledger import Ledger
from bot.ledger.review import LEAD_ROLES
from bot.ledger.rows import FeedbackRow, TurnRow

THRESHOLDS = [round(0.30 + 0.02 * i, 2) for i in range(31)]  # 0.30 … 0.90


@dataclass(frozen=True)
class Point:
    threshold: float
    declined: float | None  # share of should-not-answer turns below the threshold
    answered: float | None  # share of good answers at or above it


@dataclass
class Calibration:
    should_not_answer: int = 0
    good: int = 0
    points: list[Point] = field(default_factory=list)
    recommended: float | None = None


async def labelled_scores(ledger: Ledger) -> tuple[list[float], list[float]]:
    """Answerability of the turns whose latest lead review says "should not answer", and of
    those it approves (score 4-5 or verdict "correct")."""
    async with ledger.sessions() as session:
        rows = await session.execute(
            select(FeedbackRow.turn_id, FeedbackRow.score, FeedbackRow.verdict, TurnRow.answerability)
            .join(TurnRow, TurnRow.id == FeedbackRow.turn_id)
            .where(FeedbackRow.rater_role.in_(LEAD_ROLES), TurnRow.answerability.is_not(None))
            .order_by(FeedbackRow.created_at, FeedbackRow.id)
        )
        latest: dict[str, tuple[int | None, str | None, float]] = {}
        for turn_id, score, verdict, value in rows:
            if value is not None and (score is not None or verdict):
                latest[turn_id] = (score, verdict, float(value))
    refuse = [v for s, verdict, v in latest.values() if verdict == "should_not_answer"]
    good = [v for s, verdict, v in latest.values() if verdict == "correct" or (s or 0) >= 4]
    return refuse, good


def calibrate(refuse: list[float], good: list[float], *, answered_target: float = 0.9) -> Calibration:
    """Each threshold's decline and answer rates, and the highest threshold that still answers
    `answered_target` of the good turns (None without both kinds of turn)."""
    result = Calibration(should_not_answer=len(refuse), good=len(good))
    for t in THRESHOLDS:
        declined = sum(v < t for v in refuse) / len(refuse) if refuse else None
        answered = sum(v >= t for v in good) / len(good) if good else None
        result.points.append(Point(t, declined, answered))
        if refuse and good and answered is not None and answered >= answered_target:
            result.recommended = t
    return result
