"""Teams over real HTTP: activities in Teams' shapes POSTed to /api/messages; every reply goes to
the activity's `serviceUrl`, which is the local recorder."""

from __future__ import annotations

import json

import pytest

from tests.support.platforms import (
    LUKAS,
    VPN_QUESTION,
    activity,
    ratings,
    teams_messages,
    teams_post,
    teams_reply,
    teams_sent,
    wait_for_turns,
)
from tests.support.recorder import Call


def stream_info(call: Call) -> dict:
    return next((e for e in call.body.get("entities") or [] if e.get("type") == "streaminfo"), {})


@pytest.fixture
async def slow_server(serve_chat):
    """Answers take 4 s, long enough for Teams' paced streaming to show (the model writes them:
    a quoted answer arrives whole)."""
    async with serve_chat(generator_url="echo://?delay=4", answer_strategy="generate") as running:
        yield running


async def test_a_personal_chat_streams_and_ends_with_citations_and_feedback(slow_server, recorder) -> None:
    body = activity(VPN_QUESTION, service_url=recorder.url)
    status, _, seconds = await teams_post(slow_server.url, body)
    assert status == 202 and seconds < 1

    final = await teams_reply(recorder, "a:1personal-lukas")
    calls = teams_sent(recorder, "a:1personal-lukas")
    kinds = [(c.body["type"], stream_info(c).get("streamType")) for c in calls]
    assert kinds[0] == ("typing", "informative")
    assert ("typing", "streaming") in kinds and kinds[-1] == ("message", "final")
    stream_id = calls[0].returned_id
    assert all(stream_info(c).get("streamId") == stream_id for c in calls[1:])
    typing = [c for c in calls if c.body["type"] == "typing"]
    assert [stream_info(c)["streamSequence"] for c in typing] == list(range(1, len(typing) + 1))
    gaps = [b.at - a.at for a, b in zip(typing, typing[1:], strict=False)]
    assert gaps and min(gaps) >= 1.45  # Teams throttles faster streams
    assert calls[0].path.endswith(f"/activities/{body['id']}")  # a reply to the question

    assert final.body["channelData"]["feedbackLoopEnabled"] is True
    assert "[1]" in final.body["text"]
    [message_entity] = [e for e in final.body["entities"] if e["type"] == "https://schema.org/Message"]
    assert message_entity["additionalType"] == ["AIGeneratedContent"]
    assert "vpn" in message_entity["citation"][0]["appearance"]["url"]

    [turn] = await wait_for_turns(slow_server, "teams", 1)
    assert turn.user_key == LUKAS and turn.private is True and turn.reference in final.body["text"]


async def test_a_second_question_while_one_streams_gets_a_plain_message(slow_server, recorder) -> None:
    await teams_post(slow_server.url, activity(VPN_QUESTION, service_url=recorder.url))
    await teams_post(slow_server.url, activity("How do I report a phishing email?", service_url=recorder.url))
    await recorder.wait_for(lambda calls: len(teams_messages(recorder, "a:1personal-lukas")) == 2)
    finals = teams_messages(recorder, "a:1personal-lukas")
    assert sorted(stream_info(c).get("streamType", "none") for c in finals) == ["final", "none"]


async def test_other_bot_framework_channels_are_refused(chat_server, recorder) -> None:
    status, text, _ = await teams_post(
        chat_server.url, activity(VPN_QUESTION, service_url=recorder.url, channelId="directline")
    )
    assert status == 400 and "directline" in text
    assert await wait_for_turns(chat_server, "teams", 1, timeout=0.5) == []


async def test_a_channel_mention_is_stripped_and_answered_once(chat_server, recorder) -> None:
    body = activity(VPN_QUESTION, service_url=recorder.url, kind="channel", mention_bot=True)
    status, _, _ = await teams_post(chat_server.url, body)
    assert status == 202
    conversation = body["conversation"]["id"]
    final = await teams_reply(recorder, conversation)
    calls = teams_sent(recorder, conversation)
    assert calls[0].body["type"] == "typing" and not stream_info(calls[0])
    assert [c.body["type"] for c in calls].count("message") == 1 and not stream_info(final)
    [turn] = await wait_for_turns(chat_server, "teams", 1)
    assert turn.question == VPN_QUESTION and turn.private is False
    assert turn.channel == "19:general@thread.tacv2" and turn.groups == []
    # the email came from the connector's member lookup
    assert turn.user_key == LUKAS
    assert any(c.method == "GET" and c.path.endswith("/members/29:lukas") for c in recorder.calls)

    unmentioned = activity("Anyone know the wifi password?", service_url=recorder.url, kind="groupChat")
    status, _, _ = await teams_post(chat_server.url, unmentioned)
    assert status == 202
    assert len(await wait_for_turns(chat_server, "teams", 2, timeout=1.0)) == 1


async def test_the_feedback_invoke_is_stored_and_answered_with_an_empty_200(chat_server, recorder) -> None:
    await teams_post(chat_server.url, activity(VPN_QUESTION, service_url=recorder.url))
    final = await teams_reply(recorder, "a:1personal-lukas")
    [turn] = await wait_for_turns(chat_server, "teams", 1)
    invoke = activity(
        "",
        service_url=recorder.url,
        type="invoke",
        name="message/submitAction",
        replyToId=final.returned_id,
        value={
            "actionName": "feedback",
            "actionValue": {"reaction": "dislike", "feedback": json.dumps({"feedbackText": "The link is outdated"})},
        },
    )
    invoke.pop("text")
    status, text, _ = await teams_post(chat_server.url, invoke)
    assert status == 200 and text == ""
    [rating] = await ratings(chat_server)
    assert (rating.turn_id, rating.thumb, rating.note, rating.rater_key, rating.platform) == (
        turn.id,
        -1,
        "The link is outdated",
        LUKAS,
        "teams",
    )


async def test_a_welcome_when_installed(chat_server, recorder) -> None:
    update = activity("", service_url=recorder.url, type="conversationUpdate", membersAdded=[{"id": "28:deskmate-bot"}])
    update.pop("text")
    status, _, _ = await teams_post(chat_server.url, update)
    assert status == 202
    welcome = await teams_reply(recorder, "a:1personal-lukas")
    assert "Deskmate" in welcome.body["text"]


async def test_bad_input_gets_a_clear_answer_and_nothing_breaks(chat_server, recorder) -> None:
    status, text, _ = await teams_post(chat_server.url, None, raw=b'{"type": "message", "text": ')
    assert status == 400 and "activity" in text
    status, text, _ = await teams_post(chat_server.url, {"text": "no type"})
    assert status == 400 and "type" in text
    status, text, _ = await teams_post(
        chat_server.url, activity("", service_url=recorder.url, type="invoke", name="composeExtension/query")
    )
    assert status == 400 and "composeExtension/query" in text

    no_user = activity(VPN_QUESTION, service_url=recorder.url, conversation="a:nouser")
    no_user.pop("from")
    status, _, _ = await teams_post(chat_server.url, no_user)
    assert status == 202
    attachment_only = activity(
        "",
        service_url=recorder.url,
        conversation="a:files",
        attachments=[{"contentType": "image/png", "contentUrl": "https://x/y.png"}],
    )
    await teams_post(chat_server.url, attachment_only)
    note = await teams_reply(recorder, "a:files")
    assert "only read text" in note.body["text"]

    huge = activity(VPN_QUESTION + " " + "y" * 50_000, service_url=recorder.url, conversation="a:huge")
    status, _, _ = await teams_post(chat_server.url, huge)
    assert status == 202
    final = await teams_reply(recorder, "a:huge")
    assert "first 2,000 characters" in final.body["text"]
    assert teams_sent(recorder, "a:nouser") == []
    assert len(await wait_for_turns(chat_server, "teams", 1)) == 1


async def test_with_an_app_id_unsigned_requests_are_rejected(serve_chat, recorder) -> None:
    async with serve_chat(
        teams_app_id="6a0a8ef4-9cf1-4a36-9c5c-2b0a1d3d5f11",
        teams_app_password="not-a-real-secret",
        teams_tenant_id="tenant-1",
    ) as server:
        body = activity(VPN_QUESTION, service_url=recorder.url)
        status, _, _ = await teams_post(server.url, body)
        assert status == 401
        status, _, _ = await teams_post(server.url, body, headers={"Authorization": "Bearer not-a-jwt"})
        assert status == 401
    assert teams_sent(recorder, "a:1personal-lukas") == []
