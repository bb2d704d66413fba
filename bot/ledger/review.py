"""Review policy, in one place: which rating is a lead's review (it marks a turn reviewed and
training learns from it), and how urgently a turn needs one.
"""

from __future__ import annotations

from typing import Any

LEAD_ROLES = ("lead", "admin")


def reviews_answer(score: int | None, verdict: str | None, correction: str | None) -> bool:
    """A rating that reviews the answer (a score, a verdict or a correction), not a thumb or a
    note. An empty verdict or correction is none."""
    return score is not None or bool(verdict) or bool(correction)


def is_lead_review(role: str | None, score: int | None, verdict: str | None, correction: str | None) -> bool:
    """A review by someone allowed to give one: the kind that marks a turn reviewed and that
    training learns from."""
    return role in LEAD_ROLES and reviews_answer(score, verdict, correction)


SLOW_TURN_MS = 10_000


def turn_risk(values: dict[str, Any]) -> int:
    """How urgently a lead should look at a turn: an answer Deskmate was unsure of, could not
    give, gave slowly or partly made up comes before a confident quick one (a 👎 adds 3 when it
    arrives)."""
    risk = 0
    if values.get("status") in ("unknown", "failed"):
        risk += 2
    confidence = values.get("confidence")
    if confidence is not None and confidence < 0.5:
        risk += 2
    if (values.get("latency_ms") or {}).get("total", 0) > SLOW_TURN_MS:
        risk += 1
    if values.get("unsupported"):  # the model wrote something the passages do not say
        risk += 2
    return risk
