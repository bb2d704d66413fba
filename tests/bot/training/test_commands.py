"""`/deskmate retrain` and `/deskmate adapters` in Slack, `retrain` / `adapters` in Teams: admins
only, answered privately, and the job they start is the one the ledger shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.training import jobs
from tests.support.platforms import ANA, COMMAND, activity, slack_form, teams_post, teams_reply
from tests.support.recorder import Recorder
from tests.support.server import RunningServer, ServerFactory


@pytest.fixture
async def admin_server(serve_chat: ServerFactory) -> AsyncIterator[RunningServer]:
    """Ana (U2 in Slack, 29:ana in Teams) is an admin by her email; Lukas an employee."""
    async with serve_chat(admins=[ANA]) as running:
        yield running


async def slash(server: RunningServer, recorder: Recorder, user: str, text: str, n: int) -> str:
    """Run a slash command and return what Deskmate answered on its response URL."""
    path = f"/response/admin-{n}"
    status, body, seconds = await slack_form(
        server.url, {**COMMAND, "user_id": user, "text": text, "response_url": f"{recorder.url}{path}"}
    )
    assert status == 200 and "checking" in body and seconds < 3
    reply = await recorder.wait_for(lambda calls: next((c for c in calls if c.path == path), None))
    assert reply.body["response_type"] == "ephemeral"
    return reply.body["text"]


async def finished(server: RunningServer) -> jobs.JobRow:
    for _ in range(200):
        [job] = await jobs.list_jobs(server.deskmate.ledger, limit=1)
        if job.status not in jobs.ACTIVE:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("the job did not finish")


async def test_slack_retrain_is_for_admins_and_reports_its_job(admin_server, recorder) -> None:
    refused = await slash(admin_server, recorder, "U1", "retrain", 1)
    assert "Only admins" in refused
    assert await jobs.list_jobs(admin_server.deskmate.ledger) == []

    started = await slash(admin_server, recorder, "U2", "retrain", 2)
    assert "queued" in started
    job = await finished(admin_server)
    # Nothing rated yet: the job says so, and nothing else happened.
    assert job.status == "failed" and "No rated turns yet" in (job.error or "")
    status = await slash(admin_server, recorder, "U2", "retrain status", 3)
    assert job.id[:8] in status and "No rated turns yet" in status
    listed = await slash(admin_server, recorder, "U2", "adapters", 4)
    assert "No adapters yet" in listed
    assert "Unknown" in await slash(admin_server, recorder, "U2", "adapters frobnicate", 5)
    refused = await slash(admin_server, recorder, "U2", "adapters rollback", 6)
    assert "nothing to roll back" in refused


async def test_slack_a_second_retrain_is_refused_while_one_runs(admin_server, recorder) -> None:
    running = await jobs.create_job(admin_server.deskmate.ledger, "retrain", "someone@northwind.example", {})
    busy = await slash(admin_server, recorder, "U2", "retrain", 7)
    assert "Not started" in busy and running.id[:8] in busy and "someone@northwind.example" in busy
    assert len(await jobs.list_jobs(admin_server.deskmate.ledger)) == 1
    cancelled = await slash(admin_server, recorder, "U2", "retrain cancel", 8)
    assert running.id[:8] in cancelled
    assert (await jobs.get_job(admin_server.deskmate.ledger, running.id)).status == "cancelled"


async def test_teams_retrain_is_for_admins(admin_server, recorder) -> None:
    body = activity("retrain", service_url=recorder.url)
    status, _, _ = await teams_post(admin_server.url, body)
    assert status == 202
    reply = await teams_reply(recorder, "a:1personal-lukas")
    assert "Only admins" in reply.body["text"]
    assert await jobs.list_jobs(admin_server.deskmate.ledger) == []

    body = activity(
        "adapters", service_url=recorder.url, sender="29:ana", aad="aad-ana", conversation="a:1personal-ana"
    )
    status, _, _ = await teams_post(admin_server.url, body)
    assert status == 202
    reply = await teams_reply(recorder, "a:1personal-ana")
    assert "No adapters yet" in reply.body["text"]
    assert not await admin_server.deskmate.ledger.recent_turns(10)  # commands are not questions
