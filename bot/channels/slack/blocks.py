"""Slack's Block Kit, built: answers with their sources and buttons, the review and reason
modals; and Slack's markup read back as plain text. Pure functions, unit-tested without Slack.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bot.answering.messages import Answer, Source
from bot.feedback.ratings import VERDICTS

INPUT_MAX_CHARS = 3000  # Slack's cap on a plain_text_input's max_length
SCORES = {
    "1": "1 · wrong or harmful",
    "2": "2 · mostly unhelpful",
    "3": "3 · partly right",
    "4": "4 · good",
    "5": "5 · excellent",
}
THANKS_GOOD = "Thanks, glad it helped."
THANKS_BAD = (
    "Thanks for telling me. A support lead will review this answer; reply in the thread "
    "with what was wrong and it helps even more."
)
MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>")
LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
SPECIAL = re.compile(r"<[!#]([^|>]+)(?:\|([^>]*))?>")


def plain_text(text: str) -> str:
    """Slack's wire format as a person would read it: mentions out, links as their text,
    `&amp;`-escapes undone."""
    text = MENTION.sub(" ", text)
    text = LINK.sub(lambda m: m.group(2) or m.group(1).removeprefix("mailto:"), text)
    text = SPECIAL.sub(lambda m: m.group(2) or m.group(1), text)
    return html.unescape(" ".join(text.split()))


def source_line(sources: list[Source]) -> str:
    return " · ".join(
        f"[{s.number}] <{s.url}|{mrkdwn_escape(s.title)}>" if s.url else f"[{s.number}] {mrkdwn_escape(s.title)}"
        for s in sources
    )


def mrkdwn_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def answer_footer(answer: Answer, *, review: bool = True) -> list[dict[str, Any]]:
    """The blocks under an answer: its sources, its reference, the feedback buttons and the
    Review button. Everyone sees Review (Slack cannot show a button to some people only); who
    may use it is decided when it is clicked. `review=False` for an answer only its asker sees."""
    facts = []
    if answer.sources:
        facts.append({"type": "mrkdwn", "text": f"*Sources:* {source_line(answer.sources)}"})
    if answer.notice:
        facts.append({"type": "mrkdwn", "text": mrkdwn_escape(answer.notice)})
    facts.append({"type": "mrkdwn", "text": f"ref `{answer.reference}` · AI-generated, check the sources"})
    blocks: list[dict[str, Any]] = [{"type": "context", "elements": facts}]
    if answer.outcome in ("answered", "unknown"):
        blocks.append(
            {
                "type": "context_actions",
                "elements": [
                    {
                        "type": "feedback_buttons",
                        "action_id": "feedback",
                        "positive_button": {
                            "text": {"type": "plain_text", "text": "Good answer"},
                            "accessibility_label": "This answer helped",
                            "value": f"good:{answer.turn_id}",
                        },
                        "negative_button": {
                            "text": {"type": "plain_text", "text": "Bad answer"},
                            "accessibility_label": "This answer was wrong or unhelpful",
                            "value": f"bad:{answer.turn_id}",
                        },
                    }
                ],
            }
        )
    if review and answer.turn_id:
        blocks.append(
            {
                "type": "actions",
                "block_id": "review",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "review",
                        "value": answer.turn_id,
                        "text": {"type": "plain_text", "text": "Review"},
                    }
                ],
            }
        )
    return blocks


def answer_blocks(answer: Answer, *, review: bool = True) -> list[dict[str, Any]]:
    text = mrkdwn_escape(answer.text)[:2900]  # a section's text is capped at 3,000 characters
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}}, *answer_footer(answer, review=review)]


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def review_modal(question: str, answer: str, metadata: str, *, post_corrections: bool) -> dict[str, Any]:
    """The modal a support lead reviews an answer in. The corrected answer starts as the answer
    itself, so a lead edits rather than retypes; left unchanged, it is no correction."""

    def option(value: str, label: str) -> dict[str, Any]:
        return {"text": _plain(label), "value": value}

    post = option("post", "Post the correction in the conversation")
    correction: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": "correction",
        "multiline": True,
        "max_length": INPUT_MAX_CHARS,
    }
    if answer.strip():
        correction["initial_value"] = answer[:INPUT_MAX_CHARS]
    checkboxes: dict[str, Any] = {"type": "checkboxes", "action_id": "post", "options": [post]}
    if post_corrections:
        checkboxes["initial_options"] = [post]
    return {
        "type": "modal",
        "callback_id": "review",
        "private_metadata": metadata,
        "title": _plain("Review this answer"),
        "submit": _plain("Save review"),
        "close": _plain("Cancel"),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Question:* {mrkdwn_escape(question[:500])}"}},
            {
                "type": "input",
                "block_id": "score",
                "label": _plain("Score"),
                "element": {
                    "type": "static_select",
                    "action_id": "score",
                    "placeholder": _plain("1 to 5"),
                    "options": [option(v, label) for v, label in SCORES.items()],
                },
            },
            {
                "type": "input",
                "block_id": "verdict",
                "label": _plain("Verdict"),
                "element": {
                    "type": "static_select",
                    "action_id": "verdict",
                    "placeholder": _plain("Choose"),
                    "options": [option(v, label) for v, label in VERDICTS.items()],
                },
            },
            {
                "type": "input",
                "block_id": "note",
                "optional": True,
                "label": _plain("Note"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "note",
                    "multiline": True,
                    "max_length": INPUT_MAX_CHARS,
                },
            },
            {
                "type": "input",
                "block_id": "correction",
                "optional": True,
                "label": _plain("Corrected answer"),
                "hint": _plain("Edit the answer to correct it; leave it as it is if it needs no correction."),
                "element": correction,
            },
            {"type": "input", "block_id": "post", "optional": True, "label": _plain("Posting"), "element": checkboxes},
        ],
    }


def reason_modal(metadata: str) -> dict[str, Any]:
    """The optional "what was wrong?" after a 👎: a reason is worth more to a lead than a thumb."""
    return {
        "type": "modal",
        "callback_id": "feedback_reason",
        "private_metadata": metadata,
        "title": _plain("What was wrong?"),
        "submit": _plain("Send"),
        "close": _plain("Skip"),
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "Thanks for telling me. A support lead will review this answer."},
            },
            {
                "type": "input",
                "block_id": "reason",
                "optional": True,
                "label": _plain("What was wrong or missing? (optional)"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "reason",
                    "multiline": True,
                    "max_length": INPUT_MAX_CHARS,
                },
            },
        ],
    }
