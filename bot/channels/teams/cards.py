"""Teams' messages and Adaptive Cards, built and read: the streaming entities, the review form
and its submission, the correction reply. Pure functions and botbuilder models, unit-tested
without Teams.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from botbuilder.core import (
    InvokeResponse,
    MessageFactory,
    TurnContext,
)
from botbuilder.schema import Activity, Entity
from msrest.universal_http.requests import ClientRetryPolicy

from bot.answering.messages import Answer
from bot.channels.common import (
    HELP_TEXT,
)
from bot.feedback.ratings import (
    CORRECTION_PREFIX,
    MAX_CORRECTION_CHARS,
    MAX_NOTE_CHARS,
    VERDICTS,
    Rating,
    RatingRefused,
    unchanged,
)
from bot.feedback.roles import Role
from bot.ledger.rows import TurnRow

TAGS = re.compile(r"<[^>]+>")
STREAM_MIN_GAP_SECONDS = 1.5  # Teams throttles (429) streaming updates sent more often than this
CHANNELS = {"msteams"}

# botbuilder builds two msrest clients per activity, and each scans a 500-item list 999 times
# (about 3 ms of event-loop time, measured by bench/chat_load.py under py-spy). The same codes
# as a set make it free; msrest only ever tests membership.
ClientRetryPolicy.safe_codes = frozenset(ClientRetryPolicy.safe_codes)  # type: ignore[assignment]
REVIEW_ACTION = "review"
SCORES = {
    1: "1 - wrong or harmful",
    2: "2 - mostly wrong",
    3: "3 - partly right",
    4: "4 - right, could be better",
    5: "5 - right and complete",
}
WELCOME = "Hi, I'm Deskmate. " + HELP_TEXT.replace("• ", "- ") + "\n\nTry: *How do I reset my password?*"


class StreamInfo(Entity):  # type: ignore[misc]  # botbuilder ships no type information
    """Teams' `streaminfo` entity (botbuilder has no model for it; without an attribute map
    the serializer would drop these keys)."""

    _attribute_map = {
        "type": {"key": "type", "type": "str"},
        "stream_id": {"key": "streamId", "type": "str"},
        "stream_type": {"key": "streamType", "type": "str"},
        "stream_sequence": {"key": "streamSequence", "type": "int"},
    }

    def __init__(self, *, stream_type: str, stream_id: str | None = None, stream_sequence: int | None = None) -> None:
        super().__init__(type="streaminfo")
        self.stream_id = stream_id
        self.stream_type = stream_type
        self.stream_sequence = stream_sequence


class AiMessage(Entity):  # type: ignore[misc]  # botbuilder ships no type information
    """The schema.org Message entity: Teams' AI label and hoverable citations for `[n]` markers."""

    _attribute_map = {
        "type": {"key": "type", "type": "str"},
        "schema_type": {"key": "@type", "type": "str"},
        "context": {"key": "@context", "type": "str"},
        "id": {"key": "@id", "type": "str"},
        "additional_type": {"key": "additionalType", "type": "[str]"},
        "citation": {"key": "citation", "type": "[object]"},
    }

    def __init__(self, answer: Answer) -> None:
        super().__init__(type="https://schema.org/Message")
        self.schema_type = "Message"
        self.context = "https://schema.org"
        self.id = ""
        self.additional_type = ["AIGeneratedContent"]
        self.citation = [
            {
                "@type": "Claim",
                "position": s.number,
                "appearance": {
                    "@type": "DigitalDocument",
                    "name": s.title[:80],
                    **({"url": s.url} if s.url else {}),
                    "abstract": (s.heading or s.title)[:160],
                },
            }
            for s in answer.sources
        ]


def plain_text(activity: Activity) -> str:
    """The question without the bot's @mention or Teams' HTML."""
    text = TurnContext.remove_recipient_mention(activity) or ""
    return html.unescape(" ".join(TAGS.sub(" ", text).split()))


@dataclass(frozen=True)
class Conversation:
    kind: str  # personal | groupChat | channel
    id: str
    channel: str  # the channel (or chat) a rule is keyed by

    @property
    def private(self) -> bool:
        return self.kind == "personal"


def conversation_of(activity: Activity) -> Conversation:
    conv = activity.conversation
    kind = (conv.conversation_type if conv else None) or "unknown"  # unknown is treated as shared
    data = activity.channel_data if isinstance(activity.channel_data, dict) else {}
    channel = ((data.get("channel") or {}).get("id") or (conv.id if conv else "")).split(";")[0]
    return Conversation(kind, conv.id if conv else "", channel)


def final_text(answer: Answer) -> str:
    extra = f"\n\n_{answer.notice}_" if answer.notice else ""
    return f"{answer.text}{extra}\n\n<sub>ref {answer.reference} · AI-generated, check the sources</sub>"


def adaptive_card(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": body,
        "actions": actions,
    }


def review_button(turn_id: str) -> dict[str, Any]:
    """The card under every answer. Everyone sees the button (Teams cannot show it per person);
    the role is checked when it is pressed, on the server."""
    return adaptive_card(
        [],
        [
            {
                "type": "Action.Submit",
                "title": "Review (support leads)",
                "data": {"msteams": {"type": "task/fetch"}, "action": REVIEW_ACTION, "turn_id": turn_id},
            }
        ],
    )


def review_form(turn: TurnRow, *, post_corrections: bool) -> dict[str, Any]:
    """The lead's form: the question and the recorded answer, then score, verdict, note and a
    correction that starts as the answer itself, so a small fix is a small edit."""

    def label(text: str) -> dict[str, Any]:
        return {"type": "TextBlock", "text": text, "weight": "Bolder", "wrap": True}

    return adaptive_card(
        [
            label("Question"),
            {"type": "TextBlock", "text": turn.question, "wrap": True},
            label("Deskmate's answer"),
            {"type": "TextBlock", "text": turn.answer or "(no answer recorded)", "wrap": True},
            {
                "type": "TextBlock",
                "text": f"ref {turn.reference} · {turn.status}",
                "isSubtle": True,
                "size": "Small",
                "wrap": True,
            },
            {
                "type": "Input.ChoiceSet",
                "id": "score",
                "label": "Score",
                "style": "compact",
                "choices": [{"title": title, "value": str(n)} for n, title in SCORES.items()],
            },
            {
                "type": "Input.ChoiceSet",
                "id": "verdict",
                "label": "Verdict",
                "style": "compact",
                "choices": [{"title": title, "value": key} for key, title in VERDICTS.items()],
            },
            {
                "type": "Input.Text",
                "id": "note",
                "label": "Note for the support team",
                "isMultiline": True,
                "maxLength": MAX_NOTE_CHARS,
            },
            {
                "type": "Input.Text",
                "id": "correction",
                "label": "Corrected answer (edit the answer above)",
                "isMultiline": True,
                "value": turn.answer or "",
                "maxLength": MAX_CORRECTION_CHARS,
            },
            {
                "type": "Input.Toggle",
                "id": "post_correction",
                "title": "Post the correction in this conversation",
                "value": "true" if post_corrections else "false",
                "valueOn": "true",
                "valueOff": "false",
            },
        ],
        [{"type": "Action.Submit", "title": "Save review", "data": {"action": REVIEW_ACTION, "turn_id": turn.id}}],
    )


def _text_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RatingRefused(f"The {key} must be text.")


def review_from_form(data: dict[str, Any], turn: TurnRow, rater_key: str, role: Role) -> Rating:
    """A Rating from the submitted form. Teams sends every input as a string; anything else
    (or a score that is not a whole number) means the card was not ours, so it is refused.
    A correction left equal to the recorded answer is no correction."""
    raw_score = data.get("score")
    score: int | None = None
    if raw_score not in (None, ""):
        if not isinstance(raw_score, str | int) or isinstance(raw_score, bool):
            raise RatingRefused("The score must be a whole number from 1 to 5.")
        try:
            score = int(str(raw_score).strip())
        except ValueError:
            raise RatingRefused("The score must be a whole number from 1 to 5.") from None
    verdict = _text_field(data, "verdict") or None
    correction = _text_field(data, "correction")
    if unchanged(correction, turn.answer):
        correction = None
    return Rating(
        turn_id=turn.id,
        rater_key=rater_key,
        role=role,
        platform="teams",
        score=score,
        verdict=verdict,
        note=_text_field(data, "note"),
        correction=correction,
    )


def correction_reply(turn: TurnRow, correction: str) -> Activity:
    reply = MessageFactory.text(f"{CORRECTION_PREFIX} (ref {turn.reference})\n\n{correction}")
    reply.text_format = "markdown"
    return reply


def task_message(text: str) -> InvokeResponse:
    """A task-module answer Teams shows as a short message in place of the form."""
    return InvokeResponse(status=200, body={"task": {"type": "message", "value": text}})


def saved_summary(rating: Rating) -> str:
    parts = []
    if rating.score is not None:
        parts.append(f"score {rating.score}/5")
    if rating.verdict:
        parts.append(f"verdict {VERDICTS[rating.verdict]}")
    if rating.note:
        parts.append("a note")
    if rating.correction:
        parts.append("a corrected answer")
    return "Saved: " + ", ".join(parts) + "."
