"""Slack over real HTTP: signed requests in Slack's payload shapes against the running server;
every Web API call lands on the local recorder, where the tests read what Slack would show."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.metrics import counter, wait_for_counter
from tests.support.platforms import (
    LUKAS,
    VPN_QUESTION,
    event_callback,
    mention,
    message,
    ratings,
    slack_event,
    slack_form,
    slack_post,
    streamed_text,
    wait_for_turns,
)
from tests.support.recorder import Recorder


def answers_in(rec: Recorder, thread_ts: str) -> list:
    """Answers that went into one thread (streamed or posted)."""
    return [
        c
        for c in rec.calls
        if c.api in ("chat.startStream", "chat.postMessage") and c.body.get("thread_ts") == thread_ts
    ]


SKIPPED = "deskmate_events_skipped"


async def stopped(rec: Recorder, ts: str) -> dict:
    call = await rec.wait_for(
        lambda calls: next((c for c in calls if c.api == "chat.stopStream" and c.body.get("ts") == ts), None)
    )
    return call.body


async def test_url_verification_is_answered_only_when_signed(chat_server, recorder) -> None:
    challenge = {
        "token": "legacy",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        "type": "url_verification",
    }
    status, body, _ = await slack_event(chat_server.url, challenge)
    assert status == 200 and challenge["challenge"] in body

    status, _, _ = await slack_event(chat_server.url, challenge, secret="not-the-secret")
    assert status == 401
    stale = int(time.time()) - 10 * 60
    status, _, _ = await slack_event(chat_server.url, event_callback(mention(VPN_QUESTION)), timestamp=stale)
    assert status == 401
    status, _, _ = await slack_event(chat_server.url, challenge, headers={"X-Slack-Request-Timestamp": "soon"})
    assert status == 401
    # A signed mention after them: once it is answered, an answer to one of them would be there.
    signed = mention("How do I book a meeting room?")
    await slack_event(chat_server.url, event_callback(signed))
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])
    threads = {c.body.get("thread_ts") for c in recorder.calls if c.api in ("chat.startStream", "chat.postMessage")}
    assert threads == {signed["ts"]}, "an unsigned or stale request was answered"


async def test_a_mention_is_answered_in_a_thread_with_sources_and_feedback(chat_server, recorder) -> None:
    event = mention(VPN_QUESTION)
    status, _, seconds = await slack_event(chat_server.url, event_callback(event))
    assert status == 200 and seconds < 3

    start = await recorder.wait_for(lambda calls: next(iter(answers_in(recorder, event["ts"])), None))
    assert start.api == "chat.startStream"
    assert start.body["channel"] == "CGEN" and start.body["recipient_user_id"] == "U1"
    end = await stopped(recorder, start.returned_id)
    text = streamed_text(recorder, start.returned_id)
    assert "[1]" in text and "VPN" in text

    blocks = json.dumps(end["blocks"])
    assert "Sources:" in blocks and "vpn-password-reset" in blocks
    [buttons] = [b for b in end["blocks"] if b["type"] == "context_actions"]
    feedback = buttons["elements"][0]
    assert feedback["type"] == "feedback_buttons" and feedback["action_id"] == "feedback"

    [turn] = await wait_for_turns(chat_server, "slack", 1)
    assert turn.user_key == LUKAS and turn.status == "answered" and turn.thread_id == event["ts"]
    assert feedback["positive_button"]["value"] == f"good:{turn.id}"
    assert turn.reference in blocks
    assert [c.body["user"] for c in recorder.named("users.info")] == ["U1"]


async def test_a_thread_follow_up_is_answered_without_a_new_mention(chat_server, recorder) -> None:
    not_addressed = counter(SKIPPED, platform="slack", reason="not_addressed")
    first = mention(VPN_QUESTION)
    await slack_event(chat_server.url, event_callback(first))
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])

    follow_up = message(
        "And how do I install the client on Linux?", channel="CGEN", channel_type="channel", thread_ts=first["ts"]
    )
    await slack_event(chat_server.url, event_callback(follow_up))
    unrelated = message(
        "How do I book a meeting room?", channel="CGEN", channel_type="channel", thread_ts="1111.000001"
    )
    await slack_event(chat_server.url, event_callback(unrelated))
    await recorder.wait_for(lambda calls: len([c for c in calls if c.api == "chat.stopStream"]) == 2)
    await wait_for_counter(SKIPPED, not_addressed + 1, platform="slack", reason="not_addressed")

    assert len(answers_in(recorder, first["ts"])) == 2
    assert answers_in(recorder, "1111.000001") == []
    turns = await wait_for_turns(chat_server, "slack", 2)
    assert {t.question for t in turns} == {VPN_QUESTION, "And how do I install the client on Linux?"}
    # users.info was asked once: the identity is cached
    assert len(recorder.named("users.info")) == 1


async def test_a_retry_is_acknowledged_and_not_answered_twice(chat_server, recorder) -> None:
    duplicates = counter(SKIPPED, platform="slack", reason="duplicate")
    payload = event_callback(mention(VPN_QUESTION))
    first = await slack_event(chat_server.url, payload)
    retry = await slack_event(
        chat_server.url, payload, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    assert first[0] == 200 and retry[0] == 200
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])
    await wait_for_counter(SKIPPED, duplicates + 1, platform="slack", reason="duplicate")
    assert len(recorder.named("chat.startStream")) == 1
    assert len(await wait_for_turns(chat_server, "slack", 1)) == 1


async def test_with_redis_down_a_first_delivery_is_answered_and_a_redelivery_is_not(serve_chat) -> None:
    """Without Redis no replica can tell whether an event was answered: its first delivery is
    answered anyway, and Slack's retry of it is not (the first delivery reached a replica)."""
    from tests.support.services import free_port

    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with serve_chat(cache_url=nowhere) as server:
        first = event_callback(mention(VPN_QUESTION))
        redelivered = event_callback(mention("How do I report a phishing email?"))
        skipped = counter(SKIPPED, platform="slack", reason="duplicate")
        # "0" is how Socket Mode marks every first delivery: it is not a redelivery
        assert (await slack_event(server.url, first, headers={"X-Slack-Retry-Num": "0"}))[0] == 200
        assert (
            await slack_event(
                server.url, redelivered, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
            )
        )[0] == 200
        [turn] = await wait_for_turns(server, "slack", 1)
        await wait_for_counter(SKIPPED, skipped + 1, platform="slack", reason="duplicate")
        assert [t.question for t in await wait_for_turns(server, "slack", 1)] == [turn.question]
        assert turn.question == VPN_QUESTION


async def test_bots_edits_and_deletions_are_ignored(chat_server, recorder) -> None:
    skipped = counter(SKIPPED, platform="slack", reason="ignored")
    ignored = [
        message("I am a bot", bot_id="B999", subtype="bot_message"),
        message("Deskmate's own message", user="UBOT"),
        message("", subtype="message_changed", message={"text": "edited"}),
        message("", subtype="message_deleted", deleted_ts="1.2"),
    ]
    for event in ignored:
        status, _, _ = await slack_event(chat_server.url, event_callback(event))
        assert status == 200
    last = message(VPN_QUESTION)  # a real DM after them: once it is answered, the others were not
    await slack_event(chat_server.url, event_callback(last))
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.update" and c.body.get("blocks")])
    # the bot's, the edit and the deletion reach the handler and are counted; Deskmate's own
    # message is dropped by slack-bolt (ignoring_self_events) before any handler
    await wait_for_counter(SKIPPED, skipped + 3, platform="slack", reason="ignored")
    assert len(recorder.named("chat.postMessage")) == 1
    turns = await wait_for_turns(chat_server, "slack", 1)
    assert [t.question for t in turns] == [VPN_QUESTION]


async def test_a_direct_message_is_answered_by_editing_one_message(chat_server, recorder) -> None:
    event = message(VPN_QUESTION)
    await slack_event(chat_server.url, event_callback(event))
    final = await recorder.wait_for(
        lambda calls: next((c for c in calls if c.api == "chat.update" and c.body.get("blocks")), None)
    )
    [posted] = recorder.named("chat.postMessage")
    assert posted.body["channel"] == "D1" and "thread_ts" not in posted.body
    assert final.body["ts"] == posted.returned_id
    assert "[1]" in final.body["text"] and "vpn-password-reset" in json.dumps(final.body["blocks"])
    [turn] = await wait_for_turns(chat_server, "slack", 1)
    assert turn.private is True and turn.thread_id == "D1"


async def test_an_assistant_thread_gets_prompts_status_and_a_streamed_answer(chat_server, recorder) -> None:
    started = {
        "type": "assistant_thread_started",
        "event_ts": "1729999327.187299",
        "assistant_thread": {
            "user_id": "U1",
            "channel_id": "D1",
            "thread_ts": "1729999327.187299",
            "context": {"channel_id": "CGEN", "team_id": "T1", "enterprise_id": None},
        },
    }
    await slack_event(chat_server.url, event_callback(started))
    prompts = await recorder.wait_for(
        lambda calls: next((c for c in calls if c.api == "assistant.threads.setSuggestedPrompts"), None)
    )
    assert prompts.body["thread_ts"] == "1729999327.187299" and len(prompts.body["prompts"]) >= 2

    await slack_event(chat_server.url, event_callback(message(VPN_QUESTION, thread_ts="1729999327.187299")))
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])
    statuses = [c.body["status"] for c in recorder.named("assistant.threads.setStatus")]
    assert statuses[0] and statuses[-1] == ""
    [start] = recorder.named("chat.startStream")
    assert start.body["thread_ts"] == "1729999327.187299"


async def test_a_feedback_click_reaches_the_ledger(chat_server, recorder) -> None:
    event = mention(VPN_QUESTION)
    await slack_event(chat_server.url, event_callback(event))
    end = await recorder.wait_for(lambda calls: next((c for c in calls if c.api == "chat.stopStream"), None))
    [turn] = await wait_for_turns(chat_server, "slack", 1)
    click = {
        "type": "block_actions",
        "user": {"id": "U1", "username": "lukas", "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": "1.2.3",
        "team": {"id": "T1", "domain": "northwind"},
        "container": {"type": "message", "message_ts": end.body["ts"], "channel_id": "CGEN", "is_ephemeral": False},
        "channel": {"id": "CGEN", "name": "general"},
        "message": {"type": "message", "ts": end.body["ts"], "thread_ts": event["ts"], "text": "…"},
        "response_url": f"{recorder.url}/response/1",
        "actions": [
            {
                "type": "feedback_buttons",
                "action_id": "feedback",
                "block_id": "fb",
                "value": f"bad:{turn.id}",
                "action_ts": str(time.time()),
            }
        ],
    }
    status, _, seconds = await slack_form(chat_server.url, {"payload": json.dumps(click)})
    assert status == 200 and seconds < 3
    [rating] = await ratings(chat_server)
    assert (rating.turn_id, rating.thumb, rating.rater_key, rating.platform) == (turn.id, -1, LUKAS, "slack")
    reason = await recorder.wait_for(lambda calls: next((c for c in calls if c.api == "views.open"), None))
    view = reason.body["view"] if isinstance(reason.body["view"], dict) else json.loads(reason.body["view"])
    assert reason.body["trigger_id"] == "1.2.3" and view["callback_id"] == "feedback_reason"


async def test_the_slash_command_answers_privately_and_shares_on_request(chat_server, recorder) -> None:
    command = {
        "token": "legacy",
        "team_id": "T1",
        "team_domain": "northwind",
        "channel_id": "CGEN",
        "channel_name": "general",
        "user_id": "U1",
        "user_name": "lukas",
        "command": "/deskmate",
        "api_app_id": "A1",
        "response_url": f"{recorder.url}/response/7",
        "trigger_id": "1.2.3",
    }
    status, body, _ = await slack_form(chat_server.url, {**command, "text": "help"})
    assert status == 200 and "/deskmate ask" in body
    status, body, _ = await slack_form(chat_server.url, {**command, "text": "frobnicate"})
    assert status == 200 and "/deskmate help" in body

    status, body, seconds = await slack_form(chat_server.url, {**command, "text": f"ask {VPN_QUESTION}"})
    assert status == 200 and "Looking that up" in body and seconds < 3
    reply = await recorder.wait_for(lambda calls: next((c for c in calls if c.path == "/response/7"), None))
    assert reply.body["response_type"] == "ephemeral" and "[1]" in reply.body["text"]
    [share] = [e for b in reply.body["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert not recorder.named("chat.postMessage")

    click = {
        "type": "block_actions",
        "user": {"id": "U1", "team_id": "T1"},
        "team": {"id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": "1.2.4",
        "container": {"type": "message", "is_ephemeral": True, "channel_id": "CGEN"},
        "channel": {"id": "CGEN"},
        "response_url": f"{recorder.url}/response/8",
        "actions": [
            {
                "type": "button",
                "action_id": "share",
                "block_id": "s",
                "value": share["value"],
                "action_ts": str(time.time()),
            }
        ],
    }
    status, _, _ = await slack_form(chat_server.url, {"payload": json.dumps(click)})
    assert status == 200
    shared = await recorder.wait_for(lambda calls: next((c for c in calls if c.api == "chat.postMessage"), None))
    assert shared.body["channel"] == "CGEN" and shared.body["text"] == reply.body["text"]
    assert "<@U1> asked" in json.dumps(shared.body["blocks"])


async def test_channel_rules_decide_mentions_and_access_groups(chat_server, recorder) -> None:
    # Ana is in `hr`. Her DM may use HR documents; a plain channel may not; #hr (rule: hr) may.
    await slack_event(chat_server.url, event_callback(message("What are the salary bands?", user="U2")))
    await slack_event(chat_server.url, event_callback(mention("What are the salary bands?", user="U2", channel="CGEN")))
    await slack_event(chat_server.url, event_callback(mention("What are the salary bands?", user="U2", channel="CHR")))
    # COPEN answers without a mention; CGEN does not.
    skipped = counter(SKIPPED, platform="slack", reason="not_addressed")
    await slack_event(chat_server.url, event_callback(message(VPN_QUESTION, channel="COPEN", channel_type="channel")))
    await slack_event(chat_server.url, event_callback(message(VPN_QUESTION, channel="CGEN", channel_type="channel")))
    await wait_for_turns(chat_server, "slack", 4)
    await wait_for_counter(SKIPPED, skipped + 1, platform="slack", reason="not_addressed")
    turns = await wait_for_turns(chat_server, "slack", 5, timeout=0.5)
    assert sorted((t.channel, t.question) for t in turns) == [
        ("CGEN", "What are the salary bands?"),
        ("CHR", "What are the salary bands?"),
        ("COPEN", VPN_QUESTION),
        ("D1", "What are the salary bands?"),
    ]  # CGEN without a mention: not answered
    by_channel = {t.channel: t for t in turns}
    assert set(by_channel) == {"D1", "CGEN", "CHR", "COPEN"}
    assert by_channel["D1"].groups == ["hr"] and by_channel["CHR"].groups == ["hr"]
    assert by_channel["CGEN"].groups == []
    assert by_channel["COPEN"].question == VPN_QUESTION


async def test_bad_input_gets_a_clear_answer_and_nothing_breaks(chat_server, recorder) -> None:
    status, body, _ = await slack_post(chat_server.url, b'{"type": "event_callback", "event": ')
    assert status == 400 and "JSON" in body
    status, _, _ = await slack_event(
        chat_server.url,
        event_callback({"type": "reaction_added", "user": "U1", "reaction": "thumbsup", "event_ts": "1.1"}),
    )
    assert status == 200
    status, _, _ = await slack_event(
        chat_server.url, event_callback({"type": "message", "channel": "D1", "channel_type": "im", "ts": "1.2"})
    )
    assert status == 200
    file_share = message("", subtype="file_share", files=[{"id": "F1", "name": "error.png"}])
    await slack_event(chat_server.url, event_callback(file_share))
    note = await recorder.wait_for(lambda calls: next((c for c in calls if c.api == "chat.postMessage"), None))
    assert "only read text" in note.body["text"]

    huge = message("How do I reset my VPN password? " + "x" * 50_000, channel="D2")
    status, _, seconds = await slack_event(chat_server.url, event_callback(huge))
    assert status == 200 and seconds < 3
    final = await recorder.wait_for(
        lambda calls: next(
            (c for c in calls if c.api == "chat.update" and c.body.get("channel") == "D2" and c.body.get("blocks")),
            None,
        )
    )
    assert "first 2,000 characters" in json.dumps(final.body["blocks"])
    [turn] = await wait_for_turns(chat_server, "slack", 1)
    assert len(turn.question) > 50_000  # the ledger keeps what was asked, whole


async def test_unconfigured_slack_says_so(serve_chat) -> None:
    async with serve_chat(slack_bot_token=None) as server:
        status, body, _ = await slack_event(server.url, event_callback(mention(VPN_QUESTION)))
    assert status == 503 and "not configured" in body


async def test_socket_mode_receives_acknowledges_and_answers(serve_chat, recorder) -> None:
    async with serve_chat(slack_app_token="xapp-1-test", slack_signing_secret=None) as server:
        await recorder.wait_for(lambda calls: next((c for c in calls if c.api == "apps.connections.open"), None))
        await recorder.wait_for(lambda calls: [c for c in calls if c.path == "/socket"])
        await asyncio.sleep(0.3)
        event = mention(VPN_QUESTION)
        await recorder.push_socket_event(
            {
                "envelope_id": "57d6a792-4d35-4d0b-b6aa-3361493e1caf",
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
                "payload": event_callback(event),
            }
        )
        ack = await recorder.wait_for(lambda calls: next((c for c in calls if c.path == "/socket/ack"), None))
        assert ack.body["envelope_id"] == "57d6a792-4d35-4d0b-b6aa-3361493e1caf"
        await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])
        assert answers_in(recorder, event["ts"])
        [turn] = await wait_for_turns(server, "slack", 1)
        assert turn.user_key == LUKAS
        status, _, _ = await slack_event(server.url, event_callback(mention(VPN_QUESTION)))
        assert status == 503  # HTTP mode is off without a signing secret


async def test_a_refused_app_token_leaves_the_rest_running(serve_chat, recorder, caplog) -> None:
    import aiohttp

    from tests.support.platforms import activity, teams_post

    recorder.slack_errors["apps.connections.open"] = "invalid_auth"
    async with serve_chat(slack_app_token="xapp-revoked") as server:
        await recorder.wait_for(lambda calls: [c for c in calls if c.api == "apps.connections.open"])
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        status, _, _ = await teams_post(server.url, activity(VPN_QUESTION, service_url=recorder.url))
        assert status == 202
        # Socket Mode gave up (it logs so when it stops): nothing is left that could retry.
        for _ in range(150):
            if "slack.socket_mode_refused error=invalid_auth" in caplog.text:
                break
            await asyncio.sleep(0.02)
    assert "slack.socket_mode_refused error=invalid_auth" in caplog.text
    assert len(recorder.named("apps.connections.open")) == 1  # a refused token is not retried


async def test_without_streaming_the_answer_is_one_edited_message_in_the_thread(chat_server, recorder) -> None:
    recorder.slack_errors["chat.startStream"] = "unknown_method"
    first, second = mention(VPN_QUESTION), mention("How do I report a phishing email?")
    await slack_event(chat_server.url, event_callback(first))
    final = await recorder.wait_for(
        lambda calls: next((c for c in calls if c.api == "chat.update" and c.body.get("blocks")), None)
    )
    [posted] = recorder.named("chat.postMessage")
    assert posted.body["thread_ts"] == first["ts"] and final.body["ts"] == posted.returned_id
    assert "feedback_buttons" in json.dumps(final.body["blocks"])
    await slack_event(chat_server.url, event_callback(second))
    await recorder.wait_for(
        lambda calls: len([c for c in calls if c.api == "chat.update" and c.body.get("blocks")]) == 2
    )
    assert len(recorder.named("chat.startStream")) == 1  # Slack said the method is missing: not asked again


async def test_an_answer_that_fails_midway_is_replaced_by_the_apology(serve_chat, recorder) -> None:
    # The model writes for 3 s but may take 1: part of the answer is streamed, then it times out.
    async with serve_chat(generator_url="echo://?delay=3", generator_timeout=1, answer_strategy="generate") as server:
        event = mention(VPN_QUESTION)
        await slack_event(server.url, event_callback(event))
        final = await recorder.wait_for(
            lambda calls: next((c for c in calls if c.api == "chat.update" and c.body.get("blocks")), None)
        )
        [start] = recorder.named("chat.startStream")
        assert start.body["markdown_text"] and final.body["ts"] == start.returned_id
        assert final.body["text"].startswith("Sorry, I couldn't answer that just now")
        assert recorder.named("chat.stopStream")[0].body.get("markdown_text") is None
        [turn] = await wait_for_turns(server, "slack", 1)
        assert turn.status == "failed" and turn.answer == final.body["text"]
