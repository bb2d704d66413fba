"""Rating an answer: what each role may give, what a valid rating is, and storing it.

Employees give 👍/👎 (with an optional reason) on answers they received; support leads and
admins may rate any answer with a 1–5 score, a verdict, a note and a corrected answer. Slack,
Teams and the console all come through `submit`, so the rules hold wherever the click came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.feedback.roles import Role
from bot.ledger.failures import LEDGER_ERRORS
from bot.ledger.ledger import Ledger
from bot.ledger.review import reviews_answer

log = logging.getLogger(__name__)

VERDICTS = {
    "correct": "Correct",
    "incomplete": "Incomplete",
    "wrong": "Wrong",
    "unsafe": "Unsafe",
    "should_not_answer": "Should not have answered",
}
LEADS_ONLY = "Only support leads and admins can review answers."
NOT_ON_RECORD = "That answer is not on record (it may have been forgotten on request)."
CORRECTION_PREFIX = "Correction from a support lead:"
MAX_NOTE_CHARS = 4_000
MAX_CORRECTION_CHARS = 8_000


def unchanged(correction: str | None, answer: str | None, limit: int | None = None) -> bool:
    """Review forms start with the answer in the correction box (cut to the form's `limit`):
    left as it was, it is no correction."""
    return bool((correction or "").strip()) and (correction or "").strip() == (answer or "")[:limit].strip()


class RatingRefused(ValueError):
    """A rating that is not stored; the message is meant for the person who tried. `field` names
    the input it is about, when it is about one, so that a form can show it under that input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Rating:
    turn_id: str
    rater_key: str
    role: Role
    platform: str
    thumb: int | None = None
    score: int | None = None
    verdict: str | None = None
    note: str | None = None
    correction: str | None = None

    @property
    def is_review(self) -> bool:
        return reviews_answer(self.score, self.verdict, self.correction)


def clean(rating: Rating) -> Rating:
    """Check a rating's values; blank texts become None."""
    # NUL cannot be stored by PostgreSQL and carries no meaning in a note or an answer.
    rating.note = (rating.note or "").replace("\x00", "").strip() or None
    rating.correction = (rating.correction or "").replace("\x00", "").strip() or None
    rating.verdict = rating.verdict or None
    if rating.thumb not in (None, 1, -1):
        raise RatingRefused("A thumb is +1 or -1.")
    if rating.score is not None and (not isinstance(rating.score, int) or not 1 <= rating.score <= 5):
        raise RatingRefused("The score must be a whole number from 1 to 5.", "score")
    if rating.verdict is not None and rating.verdict not in VERDICTS:
        raise RatingRefused(f"Unknown verdict {rating.verdict!r}; choose one of: {', '.join(VERDICTS)}.", "verdict")
    if rating.note and len(rating.note) > MAX_NOTE_CHARS:
        raise RatingRefused(f"The note is {len(rating.note):,} characters; the limit is {MAX_NOTE_CHARS:,}.", "note")
    if rating.correction and len(rating.correction) > MAX_CORRECTION_CHARS:
        raise RatingRefused(
            f"The corrected answer is {len(rating.correction):,} characters; the limit is {MAX_CORRECTION_CHARS:,}.",
            "correction",
        )
    if rating.thumb is None and not rating.is_review and not rating.note:
        raise RatingRefused("The rating is empty: give a score, a verdict, a note or a correction.")
    return rating


async def submit(ledger: Ledger, rating: Rating) -> None:
    """Store a rating after checking it and the rater's right to give it."""
    rating = clean(rating)
    if rating.is_review and rating.role < Role.lead:
        log.warning("rating.refused reason=not_a_lead rater=%s turn=%s", rating.rater_key, rating.turn_id)
        raise RatingRefused(LEADS_ONLY)
    try:
        turn = await ledger.get_turn(rating.turn_id)
    except LEDGER_ERRORS:
        # The database is down: an employee's click is spooled and its owner checked on replay,
        # because a click cannot be asked for again.
        log.warning("rating.spooled_unchecked turn=%s (ledger unavailable)", rating.turn_id)
        await _store(ledger, rating, owner_check=rating.role < Role.lead)
        return
    if turn is None:
        raise RatingRefused(NOT_ON_RECORD)
    if rating.role < Role.lead and turn.user_key != rating.rater_key:
        log.warning("rating.refused reason=not_their_answer rater=%s turn=%s", rating.rater_key, rating.turn_id)
        raise RatingRefused("You can rate only the answers you were given.")
    await _store(ledger, rating)
    log.info(
        "rating.stored turn=%s role=%s platform=%s review=%s",
        rating.turn_id,
        rating.role.name,
        rating.platform,
        rating.is_review,
    )


async def _store(ledger: Ledger, rating: Rating, owner_check: bool = False) -> None:
    await ledger.record_feedback(
        rating.turn_id,
        rating.rater_key,
        platform=rating.platform,
        rater_role=rating.role.name,
        thumb=rating.thumb,
        score=rating.score,
        verdict=rating.verdict,
        note=rating.note,
        correction=rating.correction,
        owner_check=owner_check,
    )
