"""The answerability threshold calibrated on turns leads rated, from a real ledger, and
`deskmate calibrate` printing it."""

from __future__ import annotations

from bot.feedback.calibration import calibrate, labelled_scores
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd
from tests.support.cli import deskmate_from_async
from tests.support.turns import new_turn

LEAD = "lead@northwind.example"


async def _rated(ledger, answerability: float, *, verdict: str | None = None, score: int | None = None) -> str:
    start = new_turn("How do I get a parking space?", user_key="e@northwind.example")
    await ledger.record_turn(start, TurnEnd(status="answered", answer="…", answerability=answerability))
    await ledger.record_feedback(start.id, LEAD, platform="console", rater_role="lead", verdict=verdict, score=score)
    return start.id


def test_the_recommended_threshold_keeps_the_answered_share_and_declines_the_most() -> None:
    refuse = [0.35, 0.40, 0.45, 0.58]
    good = [0.50, 0.62, 0.70, 0.75, 0.80, 0.85, 0.90, 0.66, 0.72, 0.77]
    result = calibrate(refuse, good, answered_target=0.9)
    assert result.recommended == 0.62  # 0.50 is the one good answer it may lose
    at = {p.threshold: p for p in result.points}
    assert at[0.62].declined == 1.0 and at[0.62].answered == 0.9
    assert at[0.30].declined == 0.0 and at[0.30].answered == 1.0
    assert calibrate([], good).recommended is None  # one kind of turn alone recommends nothing


async def test_the_latest_lead_review_labels_a_turn(ledger) -> None:
    declined = await _rated(ledger, 0.41, verdict="should_not_answer")
    await _rated(ledger, 0.77, score=5)
    changed = await _rated(ledger, 0.55, verdict="should_not_answer")
    await ledger.record_feedback(changed, LEAD, platform="console", rater_role="lead", verdict="correct")
    start = new_turn("Unscored", user_key="e@northwind.example")  # no answerability recorded: left out
    await ledger.record_turn(start, TurnEnd(status="answered", answer="…"))
    await ledger.record_feedback(start.id, LEAD, platform="console", rater_role="lead", score=5)
    refuse, good = await labelled_scores(ledger)
    assert refuse == [0.41] and sorted(good) == [0.55, 0.77]
    assert (await ledger.get_turn(declined)).answerability == 0.41


async def test_deskmate_calibrate_prints_the_table_and_a_recommendation(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, tmp_path / "spool")
    await ledger.migrate()
    for value in (0.3, 0.4):
        await _rated(ledger, value, verdict="should_not_answer")
    for value in (0.7, 0.8, 0.9):
        await _rated(ledger, value, score=4)
    await ledger.close()
    result = await deskmate_from_async(["calibrate"], cwd=tmp_path, DESKMATE_LEDGER_URL=url)
    assert result.returncode == 0, result.stderr
    assert "2 turns rated 'should not answer', 3 approved answers" in result.stdout
    assert "Recommended: DESKMATE_ANSWERABLE_MIN=0.70" in result.stdout
