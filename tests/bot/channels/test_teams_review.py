"""Support leads review answers in Teams: the Review button under every answer opens a task
module (task/fetch), the form comes back as task/submit. Everything goes over real HTTP in
Teams' shapes; the role is decided on the server, whatever the card or the invoke claims."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.platforms import (
    ANA,
    LUKAS,
    VPN_QUESTION,
    activity,
    teams_messages,
    teams_post,
    teams_reply,
    teams_sent,
    wait_for_turns,
)
from tests.support.recorder import Call, Recorder
from tests.support.server import RunningServer

GROUP = "19:group@thread.v2"
ADAPTIVE = "application/vnd.microsoft.card.adaptive"


async def ask(server: RunningServer, rec: Recorder, *, kind: str = "groupChat") -> tuple[Call, str]:
    """Lukas asks the VPN question; returns Deskmate's answer message and the turn id."""
    body = activity(VPN_QUESTION, service_url=rec.url, kind=kind, mention_bot=kind != "personal")
    status, _, _ = await teams_post(server.url, body)
    assert status == 202
    conversation = body["conversation"]["id"]
    answer = await teams_reply(rec, conversation)
    [turn] = [t for t in await wait_for_turns(server, "teams", 1) if t.thread_id == conversation]
    return answer, turn.id


def invoke(
    rec: Recorder,
    name: str,
    value: dict[str, Any],
    *,
    sender: str = "29:ana",
    aad: str = "aad-ana",
    kind: str = "groupChat",
    **extra: Any,
) -> dict[str, Any]:
    body = activity(
        "", service_url=rec.url, sender=sender, aad=aad, kind=kind, type="invoke", name=name, value=value, **extra
    )
    body.pop("text")
    return body


def task_fetch(rec: Recorder, turn_id: str, **kwargs: Any) -> dict[str, Any]:
    """What Teams posts when the Review button is pressed: the button's data, as is."""
    data = {"msteams": {"type": "task/fetch"}, "action": "review", "turn_id": turn_id}
    return invoke(rec, "task/fetch", {"type": "task/fetch", "data": data, "context": {"theme": "default"}}, **kwargs)


def task_submit(
    rec: Recorder,
    turn_id: str,
    *,
    score: str = "",
    verdict: str = "",
    note: str = "",
    correction: str = "",
    post: str = "true",
    **kwargs: Any,
) -> dict[str, Any]:
    """What Teams posts when the form is saved: the Action.Submit data merged with every input,
    each as a string."""
    data = {
        "action": "review",
        "turn_id": turn_id,
        "score": score,
        "verdict": verdict,
        "note": note,
        "correction": correction,
        "post_correction": post,
    }
    return invoke(rec, "task/submit", {"data": data, "context": {"theme": "default"}}, **kwargs)


def review_action(call: Call) -> dict[str, Any]:
    cards = [a for a in call.body.get("attachments") or [] if a["contentType"] == ADAPTIVE]
    assert len(cards) == 1, f"expected one Adaptive Card on the answer, got {cards}"
    [attachment] = cards
    assert attachment["content"]["version"] == "1.5"
    [action] = attachment["content"]["actions"]
    return action


def inputs(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in card["body"] if item["type"].startswith("Input.")}


async def test_every_answer_carries_the_review_button(lead_server: RunningServer, recorder: Recorder) -> None:
    answer, turn_id = await ask(lead_server, recorder, kind="personal")
    action = review_action(answer)
    assert action["type"] == "Action.Submit" and action["title"] == "Review (support leads)"
    assert action["data"] == {"msteams": {"type": "task/fetch"}, "action": "review", "turn_id": turn_id}
    # the rest of the answer is unchanged
    assert answer.body["channelData"]["feedbackLoopEnabled"] is True
    assert any(e["type"] == "https://schema.org/Message" for e in answer.body["entities"])

    group_answer, _ = await ask(lead_server, recorder)
    assert review_action(group_answer)["data"]["action"] == "review"


async def test_a_lead_reviews_an_answer_and_the_correction_is_posted(
    lead_server: RunningServer, recorder: Recorder
) -> None:
    answer, turn_id = await ask(lead_server, recorder)
    recorded = (await lead_server.deskmate.ledger.get_turn(turn_id)).answer
    assert recorded

    status, text, _ = await teams_post(lead_server.url, task_fetch(recorder, turn_id))
    assert status == 200
    task = json.loads(text)["task"]
    assert task["type"] == "continue"
    assert (task["value"]["title"], task["value"]["width"], task["value"]["height"]) == (
        "Review answer",
        "large",
        "large",
    )
    assert task["value"]["card"]["contentType"] == ADAPTIVE
    form = task["value"]["card"]["content"]
    shown = [item.get("text") for item in form["body"] if item["type"] == "TextBlock"]
    assert VPN_QUESTION in shown and recorded in shown
    fields = inputs(form)
    assert [c["value"] for c in fields["score"]["choices"]] == ["1", "2", "3", "4", "5"]
    assert "incomplete" in [c["value"] for c in fields["verdict"]["choices"]]
    assert fields["note"]["isMultiline"] and fields["correction"]["isMultiline"]
    assert fields["correction"]["value"] == recorded
    assert fields["post_correction"]["type"] == "Input.Toggle" and fields["post_correction"]["value"] == "true"
    [save] = form["actions"]
    assert save["type"] == "Action.Submit" and save["data"]["turn_id"] == turn_id

    before = len(teams_messages(recorder, GROUP))
    corrected = "Reset it at https://vpn.northwind.example/reset, then reconnect the client."
    status, text, _ = await teams_post(
        lead_server.url,
        task_submit(
            recorder, turn_id, score="3", verdict="incomplete", note="Misses the reconnect step", correction=corrected
        ),
    )
    assert status == 200
    task = json.loads(text)["task"]
    assert task["type"] == "message" and task["value"].startswith("Saved:")

    [rating] = await lead_server.deskmate.ledger.ratings_of(turn_id)
    assert (rating.rater_key, rating.rater_role, rating.platform) == (ANA, "lead", "teams")
    assert (rating.score, rating.verdict, rating.note, rating.correction) == (
        3,
        "incomplete",
        "Misses the reconnect step",
        corrected,
    )
    assert (await lead_server.deskmate.ledger.get_turn(turn_id)).reviewed is True

    posted = teams_messages(recorder, GROUP)[before:]
    assert len(posted) == 1
    assert posted[0].body["text"].startswith("Correction from a support lead:") and corrected in posted[0].body["text"]
    assert answer.returned_id != posted[0].returned_id


async def test_an_unchanged_correction_is_neither_stored_nor_posted(
    lead_server: RunningServer, recorder: Recorder
) -> None:
    _, turn_id = await ask(lead_server, recorder)
    recorded = (await lead_server.deskmate.ledger.get_turn(turn_id)).answer
    before = len(teams_messages(recorder, GROUP))
    status, text, _ = await teams_post(
        lead_server.url, task_submit(recorder, turn_id, score="5", verdict="correct", correction=recorded)
    )
    assert status == 200 and json.loads(text)["task"]["value"].startswith("Saved:")
    [rating] = await lead_server.deskmate.ledger.ratings_of(turn_id)
    assert (rating.score, rating.correction) == (5, None)
    assert len(teams_messages(recorder, GROUP)) == before


async def test_a_correction_is_posted_only_when_asked_and_only_where_the_answer_was(
    lead_server: RunningServer, recorder: Recorder
) -> None:
    _, turn_id = await ask(lead_server, recorder)
    before = len(teams_messages(recorder, GROUP))
    status, text, _ = await teams_post(
        lead_server.url,
        task_submit(
            recorder, turn_id, verdict="wrong", correction="Use the self-service portal instead.", post="false"
        ),
    )
    assert status == 200 and "posted" not in json.loads(text)["task"]["value"]

    # Ana reviews the same answer from her own chat with Deskmate: saved, but not posted there
    status, text, _ = await teams_post(
        lead_server.url,
        task_submit(
            recorder,
            turn_id,
            verdict="wrong",
            correction="Use the portal.",
            kind="personal",
            conversation="a:1personal-ana",
        ),
    )
    assert status == 200 and "not posted" in json.loads(text)["task"]["value"]

    assert [r.correction for r in await lead_server.deskmate.ledger.ratings_of(turn_id)] == [
        "Use the self-service portal instead.",
        "Use the portal.",
    ]
    assert len(teams_messages(recorder, GROUP)) == before and teams_sent(recorder, "a:1personal-ana") == []


async def test_an_employee_cannot_open_the_review_form(lead_server: RunningServer, recorder: Recorder) -> None:
    _, turn_id = await ask(lead_server, recorder)
    status, text, _ = await teams_post(
        lead_server.url, task_fetch(recorder, turn_id, sender="29:lukas", aad="aad-lukas")
    )
    assert status == 200
    assert json.loads(text) == {
        "task": {"type": "message", "value": "Only support leads and admins can review answers."}
    }


async def test_a_forged_review_from_an_employee_is_refused(lead_server: RunningServer, recorder: Recorder) -> None:
    _, turn_id = await ask(lead_server, recorder)
    before = len(teams_messages(recorder, GROUP))
    status, text, _ = await teams_post(
        lead_server.url,
        task_submit(
            recorder,
            turn_id,
            score="5",
            verdict="correct",
            correction="Whatever I say",
            sender="29:lukas",
            aad="aad-lukas",
        ),
    )
    assert status == 200
    task = json.loads(text)["task"]
    assert task == {"type": "message", "value": "Only support leads and admins can review answers."}
    assert await lead_server.deskmate.ledger.ratings_of(turn_id) == []
    assert len(teams_messages(recorder, GROUP)) == before


@pytest.mark.parametrize(
    ("field", "value", "refusal"),
    [
        ("score", "9", "from 1 to 5"),
        ("score", "four", "from 1 to 5"),
        ("verdict", "brilliant", "Unknown verdict"),
        ("correction", "x" * 1_000_000, "the limit is 8,000"),
    ],
)
async def test_bad_review_input_is_refused_and_nothing_is_stored(
    lead_server: RunningServer, recorder: Recorder, field: str, value: str, refusal: str
) -> None:
    _, turn_id = await ask(lead_server, recorder)
    before = len(teams_messages(recorder, GROUP))
    form = {"score": "4", "verdict": "correct", "note": "ok", field: value}
    status, text, _ = await teams_post(lead_server.url, task_submit(recorder, turn_id, **form))
    assert status == 200
    task = json.loads(text)["task"]
    assert task["type"] == "message" and refusal in task["value"]
    assert await lead_server.deskmate.ledger.ratings_of(turn_id) == []
    assert len(teams_messages(recorder, GROUP)) == before


async def test_an_unknown_turn_is_said_to_be_unknown(lead_server: RunningServer, recorder: Recorder) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for body in (task_fetch(recorder, missing), task_submit(recorder, missing, score="4")):
        status, text, _ = await teams_post(lead_server.url, body)
        assert status == 200
        task = json.loads(text)["task"]
        assert task["type"] == "message" and "not on record" in task["value"]


async def test_a_thumb_on_someone_elses_answer_is_not_stored(chat_server: RunningServer, recorder: Recorder) -> None:
    """In a group chat everyone sees the feedback buttons; only the asker's click counts
    (nobody is a lead on this server)."""
    answer, turn_id = await ask(chat_server, recorder)

    def thumbs(sender: str, aad: str, text: str) -> dict[str, Any]:
        return invoke(
            recorder,
            "message/submitAction",
            {
                "actionName": "feedback",
                "actionValue": {"reaction": "dislike", "feedback": json.dumps({"feedbackText": text})},
            },
            sender=sender,
            aad=aad,
            replyToId=answer.returned_id,
        )

    status, text, _ = await teams_post(chat_server.url, thumbs("29:ana", "aad-ana", "Not mine but wrong"))
    assert (status, text) == (200, "")
    assert await chat_server.deskmate.ledger.ratings_of(turn_id) == []

    status, text, _ = await teams_post(chat_server.url, thumbs("29:lukas", "aad-lukas", "Link is dead"))
    assert (status, text) == (200, "")
    [rating] = await chat_server.deskmate.ledger.ratings_of(turn_id)
    assert (rating.rater_key, rating.rater_role, rating.thumb, rating.note) == (LUKAS, "employee", -1, "Link is dead")


async def test_a_replayed_invoke_is_answered_but_not_stored_again(
    lead_server: RunningServer, recorder: Recorder
) -> None:
    _answer, turn_id = await ask(lead_server, recorder)
    submission = task_submit(recorder, turn_id, score="2", verdict="wrong", post="false")
    for _ in range(2):  # the same activity id twice: a replay
        status, _, _ = await teams_post(lead_server.url, submission)
        assert status == 200
    assert [(r.score, r.verdict) for r in await lead_server.deskmate.ledger.ratings_of(turn_id)] == [(2, "wrong")]
