"""Rating and reviewing answers in Slack, over real HTTP: signed `block_actions` and
`view_submission` requests in Slack's payload shapes; what Slack would have shown is read off the
recorder, what was stored off the ledger. Roles are always decided by the server, so the tests also
send what a modal never would (an employee's forged review, out-of-range values)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.ledger.rows import TurnRow
from tests.support.platforms import (
    ANA,
    LUKAS,
    VPN_QUESTION,
    event_callback,
    mention,
    slack_event,
    slack_form,
    wait_for_turns,
)
from tests.support.recorder import Call, Recorder
from tests.support.server import RunningServer, ServerFactory

CORRECTION = "Reset it at https://id.northwind.example/vpn, then reconnect with the new password."
USERS = {"U1": "lukas", "U2": "ana"}


@pytest.fixture
async def group_server(tmp_path: Path, recorder: Recorder, serve_chat: ServerFactory) -> AsyncIterator[RunningServer]:
    """Support leads are whoever is in the Slack user group S123 (Ana); no emails named."""
    roles = tmp_path / "roles.yaml"
    roles.write_text("leads:\n  slack_groups: [S123]\n", encoding="utf-8")
    recorder.slack_usergroups = {"S123": ["U2"]}
    async with serve_chat(roles_file=roles) as running:
        yield running


# --- Slack's payloads ----------------------------------------------------------------------------


async def ask(server: RunningServer, recorder: Recorder, user: str = "U1") -> tuple[TurnRow, dict, dict]:
    """Ask in #general and wait for the answer: (its turn, the mention event, the final stopStream)."""
    event = mention(VPN_QUESTION, user=user)
    await slack_event(server.url, event_callback(event))
    start = await recorder.wait_for(
        lambda calls: next(
            (c for c in calls if c.api == "chat.startStream" and c.body.get("thread_ts") == event["ts"]), None
        )
    )
    end = await recorder.wait_for(
        lambda calls: next(
            (c for c in calls if c.api == "chat.stopStream" and c.body.get("ts") == start.returned_id), None
        )
    )
    turns = await wait_for_turns(server, "slack", 1)
    [turn] = [t for t in turns if t.thread_id == event["ts"]]
    return turn, event, end.body


def block_action(action: dict[str, Any], *, user: str, event: dict, answer_ts: str) -> dict[str, Any]:
    """A click on a button under the answer in the thread of `event`."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": USERS.get(user, user), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": f"{time.time_ns()}.1.{uuid.uuid4().hex[:8]}",
        "team": {"id": "T1", "domain": "northwind"},
        "container": {"type": "message", "message_ts": answer_ts, "channel_id": "CGEN", "is_ephemeral": False},
        "channel": {"id": "CGEN", "name": "general"},
        "message": {"type": "message", "ts": answer_ts, "thread_ts": event["ts"], "text": "…"},
        "response_url": "https://hooks.slack.com/actions/T1/1/x",
        "actions": [{**action, "action_ts": str(time.time())}],
    }


def review_click(turn_id: str, **kwargs: Any) -> dict[str, Any]:
    return block_action(
        {
            "type": "button",
            "action_id": "review",
            "block_id": "review",
            "value": turn_id,
            "text": {"type": "plain_text", "text": "Review"},
        },
        **kwargs,
    )


def thumb_click(value: str, **kwargs: Any) -> dict[str, Any]:
    return block_action(
        {"type": "feedback_buttons", "action_id": "feedback", "block_id": "fb", "value": value}, **kwargs
    )


def view_submission(view: dict[str, Any], *, user: str, values: dict[str, Any]) -> dict[str, Any]:
    """The submission of a modal as Slack posts it: the view as opened, plus its state."""
    view_id = f"V{uuid.uuid4().hex[:9].upper()}"
    return {
        "type": "view_submission",
        "team": {"id": "T1", "domain": "northwind"},
        "user": {"id": user, "username": USERS.get(user, user), "name": USERS.get(user, user), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": f"{time.time_ns()}.2.{uuid.uuid4().hex[:8]}",
        "view": {
            "id": view_id,
            "team_id": "T1",
            "type": "modal",
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view["callback_id"],
            "state": {"values": values},
            "hash": "1700000000.abcdef12",
            "title": view.get("title"),
            "clear_on_close": False,
            "notify_on_close": False,
            "close": view.get("close"),
            "submit": view.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": "A1",
            "external_id": "",
            "app_installed_team_id": "T1",
            "bot_id": "BBOT",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def review_values(
    *,
    score: str | None = "4",
    verdict: str | None = "correct",
    note: str | None = None,
    correction: str | None = None,
    post: bool = True,
) -> dict[str, Any]:
    """`view.state.values` of the review modal (block id -> action id -> state)."""

    def select(value: str | None) -> dict[str, Any]:
        option = {"text": {"type": "plain_text", "text": str(value)}, "value": value} if value else None
        return {"type": "static_select", "selected_option": option}

    ticked = (
        [{"text": {"type": "plain_text", "text": "Post the correction in the conversation"}, "value": "post"}]
        if post
        else []
    )
    return {
        "score": {"score": select(score)},
        "verdict": {"verdict": select(verdict)},
        "note": {"note": {"type": "plain_text_input", "value": note}},
        "correction": {"correction": {"type": "plain_text_input", "value": correction}},
        "post": {"post": {"type": "checkboxes", "selected_options": ticked}},
    }


async def post(server: RunningServer, payload: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    """Send an interaction; returns the status, the ack's JSON body ({} for a bare ack) and the time."""
    status, body, seconds = await slack_form(server.url, {"payload": json.dumps(payload)})
    return status, (json.loads(body) if body.strip() else {}), seconds


async def opened_view(recorder: Recorder, trigger_id: str) -> dict[str, Any]:
    call: Call = await recorder.wait_for(
        lambda calls: next((c for c in calls if c.api == "views.open" and c.body.get("trigger_id") == trigger_id), None)
    )
    view = call.body["view"]
    return json.loads(view) if isinstance(view, str) else view


def block(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    return next(b for b in view["blocks"] if b.get("block_id") == block_id)


def ephemerals_to(recorder: Recorder, user: str) -> list[str]:
    return [c.body["text"] for c in recorder.named("chat.postEphemeral") if c.body.get("user") == user]


# --- leads review ------------------------------------------------------------------------------


async def test_a_lead_reviews_an_answer_and_the_correction_reaches_the_thread(lead_server, recorder) -> None:
    turn, event, end = await ask(lead_server, recorder)
    [review] = [e for b in end["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert (review["action_id"], review["value"]) == ("review", turn.id)
    assert any(b["type"] == "context_actions" for b in end["blocks"])  # the thumbs are still there

    click = review_click(review["value"], user="U2", event=event, answer_ts=end["ts"])
    status, _, seconds = await post(lead_server, click)
    assert status == 200 and seconds < 3
    view = await opened_view(recorder, click["trigger_id"])
    assert view["callback_id"] == "review"
    assert json.loads(view["private_metadata"]) == {"turn": turn.id, "channel": "CGEN", "thread_ts": event["ts"]}
    assert [o["value"] for o in block(view, "score")["element"]["options"]] == ["1", "2", "3", "4", "5"]
    assert "should_not_answer" in [o["value"] for o in block(view, "verdict")["element"]["options"]]
    assert block(view, "note")["optional"] and block(view, "note")["element"]["multiline"]
    assert block(view, "correction")["element"]["initial_value"] == turn.answer[:3000]
    assert block(view, "post")["element"]["initial_options"]  # post_corrections is on by default

    values = review_values(
        score="2", verdict="incomplete", note="Misses the self-service portal.", correction=CORRECTION
    )
    status, ack, seconds = await post(lead_server, view_submission(view, user="U2", values=values))
    assert status == 200 and ack == {} and seconds < 3
    [rating] = await lead_server.deskmate.ledger.ratings_of(turn.id)
    assert (rating.rater_key, rating.rater_role, rating.platform) == (ANA, "lead", "slack")
    assert (rating.score, rating.verdict, rating.note, rating.correction) == (
        2,
        "incomplete",
        "Misses the self-service portal.",
        CORRECTION,
    )
    assert rating.thumb is None
    posted = await recorder.wait_for(
        lambda calls: next(
            (c for c in calls if c.api == "chat.postMessage" and "Correction" in c.body.get("text", "")), None
        )
    )
    assert posted.body["channel"] == "CGEN" and posted.body["thread_ts"] == event["ts"]
    assert posted.body["text"].startswith("Correction from a support lead:")
    assert "id.northwind.example/vpn" in posted.body["text"]


async def test_an_unticked_box_or_an_unchanged_answer_posts_nothing(lead_server, recorder) -> None:
    turn, event, end = await ask(lead_server, recorder)
    click = review_click(turn.id, user="U2", event=event, answer_ts=end["ts"])
    await post(lead_server, click)
    view = await opened_view(recorder, click["trigger_id"])
    unticked = review_values(score="3", verdict="wrong", correction=CORRECTION, post=False)
    unchanged = review_values(score="5", verdict="correct", correction=turn.answer[:3000])
    for values in (unticked, unchanged):
        status, ack, _ = await post(lead_server, view_submission(view, user="U2", values=values))
        assert status == 200 and ack == {}
    rows = await lead_server.deskmate.ledger.ratings_of(turn.id)
    assert [(r.score, r.correction) for r in rows] == [(3, CORRECTION), (5, None)]
    assert not [c for c in recorder.named("chat.postMessage") if "Correction" in c.body.get("text", "")]


async def test_a_lead_by_slack_user_group_gets_the_review_form(group_server, recorder) -> None:
    turn, event, end = await ask(group_server, recorder)
    click = review_click(turn.id, user="U2", event=event, answer_ts=end["ts"])
    status, _, _ = await post(group_server, click)
    assert status == 200
    view = await opened_view(recorder, click["trigger_id"])
    assert view["callback_id"] == "review"
    [lookup] = recorder.named("usergroups.users.list")
    assert lookup.body["usergroup"] == "S123"

    # Lukas is not in the group: refused, and the member list came from the cache.
    await post(group_server, review_click(turn.id, user="U1", event=event, answer_ts=end["ts"]))
    await recorder.wait_for(lambda calls: ephemerals_to(recorder, "U1"))
    assert ephemerals_to(recorder, "U1") == ["Only support leads and admins can review answers."]
    assert len(recorder.named("usergroups.users.list")) == 1
    assert len(recorder.named("views.open")) == 1

    status, ack, _ = await post(
        group_server, view_submission(view, user="U2", values=review_values(score="4", verdict="correct", note="Fine."))
    )
    assert ack == {}
    [rating] = await group_server.deskmate.ledger.ratings_of(turn.id)
    assert (rating.rater_key, rating.rater_role) == (ANA, "lead")


async def test_a_user_group_lookup_slack_refuses_means_employee(group_server, recorder) -> None:
    recorder.slack_errors["usergroups.users.list"] = "missing_scope"
    turn, event, end = await ask(group_server, recorder)
    await post(group_server, review_click(turn.id, user="U2", event=event, answer_ts=end["ts"]))
    await recorder.wait_for(lambda calls: ephemerals_to(recorder, "U2"))
    assert ephemerals_to(recorder, "U2") == ["Only support leads and admins can review answers."]
    assert not recorder.named("views.open")


# --- what employees may not do -----------------------------------------------------------------


async def test_an_employee_clicking_review_is_told_no_and_gets_no_form(chat_server, recorder) -> None:
    turn, event, end = await ask(chat_server, recorder)
    status, _, seconds = await post(chat_server, review_click(turn.id, user="U1", event=event, answer_ts=end["ts"]))
    assert status == 200 and seconds < 3
    told = await recorder.wait_for(
        lambda calls: next((c for c in calls if c.api == "chat.postEphemeral" and c.body.get("user") == "U1"), None)
    )
    assert told.body["text"] == "Only support leads and admins can review answers."
    assert told.body["channel"] == "CGEN" and told.body["thread_ts"] == event["ts"]
    assert not recorder.named("views.open")


async def test_a_forged_review_from_an_employee_is_refused(chat_server, recorder) -> None:
    turn, event, _ = await ask(chat_server, recorder)
    forged = {
        "callback_id": "review",
        "blocks": [],
        "private_metadata": json.dumps({"turn": turn.id, "channel": "CGEN", "thread_ts": event["ts"]}),
    }
    values = review_values(score="5", verdict="correct", correction="Call me on my mobile instead.")
    status, ack, _ = await post(chat_server, view_submission(forged, user="U1", values=values))
    assert status == 200 and ack["response_action"] == "errors"
    assert "Only support leads and admins" in ack["errors"]["score"]
    assert await chat_server.deskmate.ledger.ratings_of(turn.id) == []
    assert not [c for c in recorder.named("chat.postMessage") if "Correction" in c.body.get("text", "")]


async def test_invalid_reviews_are_shown_under_their_field_and_not_stored(lead_server, recorder) -> None:
    turn, event, end = await ask(lead_server, recorder)
    click = review_click(turn.id, user="U2", event=event, answer_ts=end["ts"])
    await post(lead_server, click)
    view = await opened_view(recorder, click["trigger_id"])
    cases = [
        (review_values(score="7"), "score", "1 to 5"),
        (review_values(score="four"), "score", "1 to 5"),
        (review_values(score=None), "score", "score"),
        (review_values(verdict="brilliant"), "verdict", "Unknown verdict"),
        (review_values(correction="x" * 1_000_000), "correction", "8,000"),
        (review_values(note="n" * 5_000), "note", "4,000"),
    ]
    for values, field, words in cases:
        status, ack, seconds = await post(lead_server, view_submission(view, user="U2", values=values))
        assert status == 200 and seconds < 3, field
        assert ack["response_action"] == "errors" and words in ack["errors"][field], (field, ack)
    assert await lead_server.deskmate.ledger.ratings_of(turn.id) == []
    assert not [c for c in recorder.named("chat.postMessage") if "Correction" in c.body.get("text", "")]


# --- thumbs --------------------------------------------------------------------------------------


async def test_a_thumbs_down_asks_why_and_stores_the_reason(chat_server, recorder) -> None:
    turn, event, end = await ask(chat_server, recorder)
    click = thumb_click(f"bad:{turn.id}", user="U1", event=event, answer_ts=end["ts"])
    status, _, seconds = await post(chat_server, click)
    assert status == 200 and seconds < 3
    view = await opened_view(recorder, click["trigger_id"])
    assert view["callback_id"] == "feedback_reason" and block(view, "reason")["optional"]
    [thumb] = await chat_server.deskmate.ledger.ratings_of(turn.id)
    assert (thumb.thumb, thumb.rater_key, thumb.rater_role, thumb.platform) == (-1, LUKAS, "employee", "slack")

    reason = "It sent me to the helpdesk, which is closed at weekends."
    values = {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
    # Ana did not get this answer: her (forged) reason is refused under the field.
    status, ack, _ = await post(chat_server, view_submission(view, user="U2", values=values))
    assert ack["response_action"] == "errors" and "only the answers you were given" in ack["errors"]["reason"]
    status, ack, _ = await post(chat_server, view_submission(view, user="U1", values=values))
    assert status == 200 and ack == {}
    rows = await chat_server.deskmate.ledger.ratings_of(turn.id)
    assert [(r.thumb, r.note, r.rater_key) for r in rows] == [(-1, None, LUKAS), (None, reason, LUKAS)]


async def test_an_employee_may_thumb_only_their_own_answers(chat_server, recorder) -> None:
    turn, event, end = await ask(chat_server, recorder)
    await post(chat_server, thumb_click(f"good:{turn.id}", user="U2", event=event, answer_ts=end["ts"]))
    await recorder.wait_for(lambda calls: ephemerals_to(recorder, "U2"))
    assert "only the answers you were given" in ephemerals_to(recorder, "U2")[0]
    assert await chat_server.deskmate.ledger.ratings_of(turn.id) == []

    await post(chat_server, thumb_click(f"good:{turn.id}", user="U1", event=event, answer_ts=end["ts"]))
    await recorder.wait_for(lambda calls: ephemerals_to(recorder, "U1"))
    assert ephemerals_to(recorder, "U1") == ["Thanks, glad it helped."]
    [rating] = await chat_server.deskmate.ledger.ratings_of(turn.id)
    assert (rating.thumb, rating.rater_key) == (1, LUKAS)
    assert not recorder.named("views.open")  # a 👍 asks nothing more


async def test_a_replayed_review_or_thumb_is_stored_once(lead_server, recorder) -> None:
    turn, event, end = await ask(lead_server, recorder)
    click = review_click(turn.id, user="U2", event=event, answer_ts=end["ts"])
    await post(lead_server, click)
    view = await opened_view(recorder, click["trigger_id"])
    submission = view_submission(view, user="U2", values=review_values(score="2", verdict="wrong"))
    missing = view_submission(view, user="U2", values=review_values(score=None, verdict="wrong"))
    missing["view"]["id"] = submission["view"]["id"]  # the same modal, first sent without a score
    status, ack, _ = await post(lead_server, missing)
    assert status == 200 and ack["response_action"] == "errors"
    for _ in range(2):  # fixed and sent, then replayed as is
        status, ack, _ = await post(lead_server, submission)
        assert status == 200 and ack == {}
    assert [(r.score, r.verdict) for r in await lead_server.deskmate.ledger.ratings_of(turn.id)] == [(2, "wrong")]
