"""The retraining pages over real HTTP: jobs with their live progress, dataset card and report;
adapter versions promoted and rolled back; and who may press which button."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from yarl import URL

from bot.training import adapters, jobs
from finetune import evaluate
from tests.support.cli import deskmate_from_async
from tests.support.console import ADMIN, LEAD, csrf_of, signed_in
from tests.support.server import register_adapter


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as r:
        return r.status, await r.text()


async def lead_csrf(server, lead: aiohttp.ClientSession) -> str:
    """A lead's pages on the retraining side carry no form, so take the token from a review form."""
    return csrf_of((await get(lead, f"{server.url}/console/turns/{server.turn_ids[0]}"))[1])


async def finished(http: aiohttp.ClientSession, url: str, timeout: float = 120) -> dict:
    """Poll the job's JSON, as the page's script does, until the job is over."""
    for _ in range(int(timeout * 4)):
        async with http.get(url) as r:
            state = await r.json()
        if not state["active"]:
            return state
        await asyncio.sleep(0.25)
    raise AssertionError(f"job still {state} after {timeout} s")


async def test_an_admin_starts_a_dry_run_and_sees_its_dataset_card(console_server) -> None:
    url, deskmate = console_server.url, console_server.deskmate
    await deskmate.ledger.record_feedback(
        console_server.turn_ids[0], ADMIN, platform="console", rater_role="admin", score=5, verdict="correct"
    )
    admin = await signed_in(console_server, ADMIN)
    async with admin:
        status, page = await get(admin, url + "/console/jobs")
        assert status == 200 and "Retrain now" in page and "No retraining job has run yet" in page
        assert 'href="/console/jobs"' in page and 'href="/console/adapters"' in page  # in the navigation
        async with admin.post(
            url + "/console/jobs", data={"csrf": csrf_of(page), "dry_run": "on"}, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()
            job_page = r.headers["Location"]
        job_id = job_page.rsplit("/", 1)[-1]
        state = await finished(admin, f"{url}/console/jobs/{job_id}.json")
        assert state["status"] == "succeeded" and state["progress"] == 1.0

        status, page = await get(admin, url + job_page)
        assert status == 200 and "Rated turns read: 1" in page and "| examples | train | eval |" in page
        assert "dry run" in page and "Not available" in page  # a dry run stops before the report
        assert "data-poll" not in page  # nothing left to follow
        status, page = await get(admin, url + "/console/jobs")
        assert job_id[:8] in page and "training set built" in page and ADMIN in page
    job = await jobs.get_job(deskmate.ledger, job_id)
    assert job.actor == ADMIN and job.params["dry_run"] is True


async def test_one_job_at_a_time_and_only_admins_start_or_cancel_one(console_server) -> None:
    url, ledger = console_server.url, console_server.deskmate.ledger
    busy = await jobs.create_job(ledger, "retrain", "someone@northwind.example", {})
    admin, lead = await signed_in(console_server, ADMIN), await signed_in(console_server, LEAD)
    async with admin, lead:
        status, page = await get(admin, url + "/console/jobs")
        assert f'data-poll="/console/jobs/{busy.id}.json"' in page  # its progress is followed live
        async with admin.post(url + "/console/jobs", data={"csrf": csrf_of(page)}) as r:
            body = await r.text()
        assert r.status == 409 and f"job {busy.id[:8]} is already queued" in body
        assert "someone@northwind.example" in body and "Traceback" not in body

        status, page = await get(lead, url + "/console/jobs")
        assert status == 200 and busy.id[:8] in page
        assert 'action="/console/jobs"' not in page and "/cancel" not in page  # no buttons for a lead
        csrf = await lead_csrf(console_server, lead)
        async with lead.post(url + "/console/jobs", data={"csrf": csrf}) as r:
            assert r.status == 403 and "Only admins" in await r.text()
        async with lead.post(f"{url}/console/jobs/{busy.id}/cancel", data={"csrf": csrf}) as r:
            assert r.status == 403
        assert [j.id for j in await jobs.list_jobs(ledger)] == [busy.id]
        assert (await jobs.get_job(ledger, busy.id)).status == "queued"

        status, page = await get(admin, f"{url}/console/jobs/{busy.id}")
        assert "Cancel</button>" in page
        async with admin.post(f"{url}/console/jobs/{busy.id}/cancel", data={"csrf": csrf_of(page)}) as r:
            assert r.status == 200 and "cancelled before it started" in await r.text()
    assert (await jobs.get_job(ledger, busy.id)).status == "cancelled"
    assert await jobs.active_job(ledger, "retrain") is None  # the next one may start


async def test_the_job_page_shows_the_report_its_plot_and_only_that(console_server) -> None:
    url, ledger = console_server.url, console_server.deskmate.ledger
    job = await jobs.create_job(ledger, "retrain", ADMIN, {})
    folder: Path = console_server.settings.resolved_jobs_dir() / job.id
    folder.mkdir(parents=True)
    candidate = {"turns": 12, "token_f1": 0.612, "rouge_l": 0.55, "citation_rate": 0.9, "declined_rate": 1.0}
    live = {"turns": 12, "token_f1": 0.48, "rouge_l": 0.41, "citation_rate": 0.8, "declined_rate": None}
    guards = [
        {"question": "How do I reset my VPN password?", "live_passed": True, "candidate_passed": True},
        {"question": "Who approves travel to Lisbon?", "live_passed": False, "candidate_passed": False},
    ]
    report = {
        "candidate_adapter": "qwen-test-candidate",
        "live_adapter": "",
        "held_out_turns": 12,
        "candidate": candidate,
        "live": live,
        "guards": guards,
        "decision": evaluate.decide(candidate, live, guards, 0.02),
        "quoted": {"turns": 5, "token_f1": 0.7},
        "strategy": {**evaluate.answer_strategy({"token_f1": 0.5}, {"token_f1": 0.7}), "compared_turns": 5},
    }
    (folder / "report.json").write_text(json.dumps(report))
    evaluate.plot(report, folder / "report.png")
    await jobs.finish_job(
        ledger,
        job.id,
        "succeeded",
        result={
            "adapter": "qwen-test-candidate",
            "passed_gate": True,
            "promoted": False,
            "reasons": report["decision"]["reasons"],
            "candidate": candidate,
            "live": live,
        },
    )
    empty = await jobs.create_job(ledger, "retrain", ADMIN, {"dry_run": True})  # has no folder at all

    lead = await signed_in(console_server, LEAD)
    async with lead:
        status, page = await get(lead, f"{url}/console/jobs/{job.id}")
        assert status == 200
        for shown in (
            "0.612",
            "0.480",
            "+0.132",
            "n/a",
            "qwen-test-candidate",
            "beats the live adapter on every check",
            "Who approves travel to Lisbon?",
            "pass",
            "fail",
            f'src="/console/jobs/{job.id}/report.png"',
            'Once live it answers by: <span class="tag">quote</span>',  # quoting beat its writing
            "quoting scores token F1 0.700",
            "on the 5 held-out turns a lead corrected",
        ):
            assert shown in page, shown
        assert "Not produced yet" in page  # this job's folder has no dataset card
        async with lead.get(f"{url}/console/jobs/{job.id[:8]}/report.png") as r:
            assert r.status == 200 and r.content_type == "image/png"
            assert (await r.read()).startswith(b"\x89PNG")

        status, page = await get(lead, f"{url}/console/jobs/{empty.id}")
        assert status == 200 and "Not produced yet" in page and "Not available" in page
        for path in (
            f"/console/jobs/{empty.id}/report.png",
            "/console/jobs/..%2f..%2f../report.png",
            f"/console/jobs/{job.id}/..%2freport.json",
            "/console/jobs/%2e%2e%2f%2e%2e/report.png",
            "/console/jobs/0000000000/report.png",
            "/console/jobs/nope.json",
        ):
            async with lead.get(URL(url + path, encoded=True), allow_redirects=False) as r:
                assert r.status == 404, path
                assert b"candidate" not in await r.read()


async def test_an_admin_promotes_and_rolls_back_and_the_server_follows(console_server, blank_adapter) -> None:
    url, deskmate = console_server.url, console_server.deskmate
    name = await register_adapter(deskmate, blank_adapter)
    admin = await signed_in(console_server, ADMIN)
    async with admin:
        status, page = await get(admin, url + "/console/adapters")
        assert status == 200 and name in page and "Serving now: the base model" in page
        async with admin.post(
            f"{url}/console/adapters/{name}/promote", data={"csrf": csrf_of(page)}, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()
        assert await adapters.live_adapter(deskmate.ledger) == name
        assert deskmate.generator.adapter == name
        status, page = await get(admin, url + "/console/adapters")
        assert f"Serving now: <code>{name}</code>" in page and "LIVE" in page and ADMIN in page

        async with admin.post(url + "/console/adapters/rollback", data={"csrf": csrf_of(page)}) as r:
            page = await r.text()
        assert r.status == 200 and "Rolled back" in page and "Serving now: the base model" in page
        assert "rollback" in page and "promote" in page  # both in the history
    assert await adapters.live_adapter(deskmate.ledger) == ""
    assert deskmate.generator.adapter == ""


async def test_refused_promotions_say_why_and_change_nothing(console_server, blank_adapter) -> None:
    url, deskmate = console_server.url, console_server.deskmate
    rejected = await register_adapter(deskmate, blank_adapter, status="rejected")
    foreign = await register_adapter(deskmate, blank_adapter, base_model="someone/other-model")
    admin, lead = await signed_in(console_server, ADMIN), await signed_in(console_server, LEAD)
    async with admin, lead:
        status, page = await get(lead, url + "/console/adapters")
        assert status == 200 and rejected in page and foreign in page
        assert "/promote" not in page and "/rollback" not in page  # no buttons for a lead
        async with lead.post(
            f"{url}/console/adapters/{rejected}/promote",
            data={"csrf": await lead_csrf(console_server, lead), "force": "on"},
        ) as r:
            assert r.status == 403 and "Only admins" in await r.text()

        status, page = await get(admin, url + "/console/adapters")
        assert "force" in page
        csrf = csrf_of(page)
        async with admin.post(f"{url}/console/adapters/{rejected}/promote", data={"csrf": csrf}) as r:
            body = await r.text()
        assert r.status == 409 and "did not pass the evaluation gate" in body and "nothing changed" in body
        async with admin.post(f"{url}/console/adapters/{foreign}/promote", data={"csrf": csrf}) as r:
            body = await r.text()
        assert r.status == 409 and "someone/other-model" in body
        async with admin.post(url + "/console/adapters/rollback", data={"csrf": csrf}) as r:
            assert r.status == 409 and "nothing to roll back" in await r.text()
        assert await adapters.live_adapter(deskmate.ledger) == "" and deskmate.generator.adapter == ""
        assert await adapters.history(deskmate.ledger) == []

        async with admin.post(f"{url}/console/adapters/{rejected}/promote", data={"csrf": csrf, "force": "on"}) as r:
            assert r.status == 200
    assert await adapters.live_adapter(deskmate.ledger) == rejected  # forced: the admin's call


async def test_lora_env_names_what_tgi_must_load_before_a_promotion_or_rollback(console_server, blank_adapter) -> None:
    deskmate = console_server.deskmate
    first, second, waiting = [await register_adapter(deskmate, blank_adapter) for _ in range(3)]
    rejected = await register_adapter(deskmate, blank_adapter, status="rejected")
    for name in (first, second):
        await adapters.promote(deskmate.ledger, deskmate.registry, name, actor="t", generator=deskmate.generator)
    settings = console_server.settings
    done = await deskmate_from_async(
        ["adapters", "lora-env", "--root", "/mnt/adapters/"],
        cwd=settings.data_dir,
        DESKMATE_DATA_DIR=str(settings.data_dir),
        DESKMATE_LEDGER_URL=str(settings.ledger_url),
        DESKMATE_STORE_URL=str(settings.store_url),
        DESKMATE_GENERATOR_URL="echo://",
    )
    assert done.returncode == 0, done.stderr
    # live first, then what rollback would need, then the candidate an admin may promote next
    assert done.stdout.strip() == ",".join(f"{n}=/mnt/adapters/{n}" for n in (second, first, waiting))
    assert rejected not in done.stdout
