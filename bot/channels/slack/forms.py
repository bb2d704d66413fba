"""Slack's submitted views, read: the values of a modal's inputs, its private metadata, and the
rating a review modal describes, with a refusal shown under the input it is about. Pure
functions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from bot.channels.slack.blocks import INPUT_MAX_CHARS
from bot.feedback.ratings import Rating, RatingRefused, clean, unchanged
from bot.feedback.roles import Role


def state_value(view: dict[str, Any], block: str) -> Any:
    """The value of one input in a submitted view: a select's option value, a text, or the
    checkbox values (a list). None when the input is missing or empty."""
    element = ((view.get("state") or {}).get("values") or {}).get(block, {}).get(block) or {}
    if "selected_options" in element:
        return [o.get("value") for o in element.get("selected_options") or []]
    if "selected_option" in element:
        return (element.get("selected_option") or {}).get("value")
    return element.get("value")


def private_metadata(view: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def review_from(
    view: dict[str, Any], answer: str | None, turn_id: str, rater_key: str, role: Role
) -> tuple[Rating, dict[str, str]]:
    """The rating a submitted review modal describes, and the errors to show under its inputs
    (Slack's `response_action: errors`): a missing choice, or `clean`'s refusal under the input
    it names. `answer`: the turn's answer, which the correction box starts with."""
    errors: dict[str, str] = {}
    raw_score = state_value(view, "score")
    score = None
    if raw_score is None:
        errors["score"] = "Choose a score from 1 to 5."
    else:
        try:
            score = int(str(raw_score))
        except ValueError:
            errors["score"] = "The score must be a whole number from 1 to 5."
    verdict = state_value(view, "verdict")
    if verdict is None:
        errors["verdict"] = "Choose a verdict."
    correction = state_value(view, "correction") or ""
    if unchanged(correction, answer, INPUT_MAX_CHARS):
        correction = ""
    rating = Rating(
        turn_id,
        rater_key,
        role,
        "slack",
        score=score,
        verdict=verdict,
        note=state_value(view, "note"),
        correction=correction,
    )
    try:
        clean(replace(rating))
    except RatingRefused as exc:
        if exc.field:
            errors.setdefault(exc.field, str(exc))
    return rating, errors
