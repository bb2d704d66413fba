"""Teams' pure parts without Teams: the question read from an activity, the conversation it came
from, the answer's closing text, and the lead's review form and its submission."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botbuilder.schema import Activity, ConversationAccount

from bot.answering.messages import Answer
from bot.channels.teams.cards import (
    REVIEW_ACTION,
    conversation_of,
    final_text,
    plain_text,
    review_button,
    review_form,
    review_from_form,
    saved_summary,
)
from bot.feedback.ratings import RatingRefused
from bot.feedback.roles import Role
from bot.ledger.rows import TurnRow


def turn() -> TurnRow:
    return TurnRow(
        id="t-1",
        reference="3F9A2C1B",
        created_at=datetime.now(UTC),
        platform="teams",
        user_key="ana@example.com",
        question="How do I reset my VPN password?",
        answer="Use the self-service portal.",
    )


def test_the_question_is_read_without_the_mention_and_the_html() -> None:
    # as the Bot Framework sends it (JSON), deserialized the way the adapter does
    activity = Activity().deserialize(
        {
            "type": "message",
            "text": "<at>Deskmate</at> how do I <b>reset</b> my VPN &amp; email?",
            "recipient": {"id": "28:bot", "name": "Deskmate"},
            "entities": [
                {"type": "mention", "text": "<at>Deskmate</at>", "mentioned": {"id": "28:bot", "name": "Deskmate"}}
            ],
        }
    )
    assert plain_text(activity) == "how do I reset my VPN & email?"


def test_a_channel_message_is_keyed_by_its_channel_and_only_a_personal_chat_is_private() -> None:
    channel = Activity(
        conversation=ConversationAccount(id="19:abc@thread.tacv2;messageid=1", conversation_type="channel"),
        channel_data={"channel": {"id": "19:abc@thread.tacv2"}},
    )
    seen = conversation_of(channel)
    assert seen.channel == "19:abc@thread.tacv2" and not seen.private
    personal = conversation_of(Activity(conversation=ConversationAccount(id="a:1", conversation_type="personal")))
    assert personal.private and personal.channel == "a:1"
    assert not conversation_of(Activity()).private  # unknown is treated as shared


def test_the_answer_ends_with_its_reference_and_notice() -> None:
    text = final_text(Answer("t-1", "3F9A2C1B", "Use the portal.", "answered", notice="Based on 1 source."))
    assert text.startswith("Use the portal.") and "_Based on 1 source._" in text and "ref 3F9A2C1B" in text


def test_the_review_button_and_form_carry_the_turn_and_start_from_the_answer() -> None:
    button = review_button("t-1")["actions"][0]
    assert button["data"] == {"msteams": {"type": "task/fetch"}, "action": REVIEW_ACTION, "turn_id": "t-1"}
    form = repr(review_form(turn(), post_corrections=False))
    assert "How do I reset my VPN password?" in form and "Use the self-service portal." in form


def test_a_submitted_form_becomes_a_rating_and_a_forged_one_is_refused() -> None:
    rating = review_from_form(
        {"score": "4", "verdict": "incomplete", "note": "", "correction": "Use the portal at vpn.example."},
        turn(),
        "lead@example.com",
        Role.lead,
    )
    assert (rating.score, rating.verdict, rating.correction) == (4, "incomplete", "Use the portal at vpn.example.")
    assert saved_summary(rating) == "Saved: score 4/5, verdict Incomplete, a corrected answer."
    unchanged = review_from_form({"score": "5", "correction": turn().answer}, turn(), "lead@example.com", Role.lead)
    assert unchanged.correction is None
    for forged in ({"score": True}, {"score": "four"}, {"note": ["a"]}):
        with pytest.raises(RatingRefused):
            review_from_form(forged, turn(), "lead@example.com", Role.lead)
