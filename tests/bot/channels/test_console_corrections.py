"""A lead's correction made in the console reaches the Slack thread or Teams chat the question
came from (through the adapters, to the local Slack/Teams stand-in)."""

from __future__ import annotations

import aiohttp

from bot.console.auth import issue_token
from tests.support.console import csrf_of, sign_in
from tests.support.platforms import (
    ANA,
    VPN_QUESTION,
    activity,
    event_callback,
    mention,
    slack_event,
    teams_post,
    wait_for_turns,
)

CORRECTION = "Reset it in the self-service portal, then reconnect with the new password."


async def correct_in_console(server, turn_id: str, post: bool) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        token = await issue_token(server.deskmate.ledger, ANA)
        assert (await sign_in(http, server.url, token)).status == 302
        async with http.get(f"{server.url}/console/turns/{turn_id}") as r:
            page = await r.text()
        form = {
            "csrf": csrf_of(page),
            "score": "2",
            "verdict": "incomplete",
            "correction": CORRECTION,
            "then": "stay",
            **({"post_correction": "on"} if post else {}),
        }
        async with http.post(f"{server.url}/console/turns/{turn_id}/rate", data=form) as r:
            text = await r.text()
            assert r.status == 200, text
            return text


async def test_a_console_correction_is_posted_in_the_slack_thread(lead_server, recorder) -> None:
    event = mention(VPN_QUESTION)
    await slack_event(lead_server.url, event_callback(event))
    await recorder.wait_for(lambda calls: [c for c in calls if c.api == "chat.stopStream"])
    [turn] = await wait_for_turns(lead_server, "slack", 1)

    await correct_in_console(lead_server, turn.id, post=False)
    assert not recorder.named("chat.postMessage")
    page = await correct_in_console(lead_server, turn.id, post=True)
    assert "could not be posted" not in page
    [posted] = recorder.named("chat.postMessage")
    assert posted.body["channel"] == "CGEN" and posted.body["thread_ts"] == event["ts"]
    assert "Correction from a support lead" in posted.body["text"] and CORRECTION in posted.body["text"]
    assert [r.correction for r in await lead_server.deskmate.ledger.ratings_of(turn.id)] == [CORRECTION] * 2


async def test_a_console_correction_is_posted_in_the_teams_chat(lead_server, recorder) -> None:
    await teams_post(lead_server.url, activity(VPN_QUESTION, service_url=recorder.url))
    await recorder.wait_for(lambda calls: [c for c in calls if c.body.get("type") == "message"])
    [turn] = await wait_for_turns(lead_server, "teams", 1)
    await correct_in_console(lead_server, turn.id, post=True)
    sent = [
        c
        for c in recorder.calls
        if c.method == "POST"
        and c.path.startswith("/v3/conversations/a:1personal-lukas")
        and CORRECTION in (c.body.get("text") or "")
    ]
    assert len(sent) == 1 and "Correction from a support lead" in sent[0].body["text"]
