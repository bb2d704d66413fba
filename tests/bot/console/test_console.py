"""The review console over real HTTP: who gets in, the queue, rating with its checks, export."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from bot.console.auth import issue_token
from tests.support.cli import deskmate, deskmate_from_async
from tests.support.console import ADMIN, EMPLOYEE, LEAD, console_settings, csrf_of, sign_in, signed_in
from tests.support.server import running_server


async def test_nobody_gets_in_without_signing_in_and_employees_not_at_all(console_server) -> None:
    url = console_server.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for path in (
            "/console/queue",
            "/console/dashboard",
            "/console/export.jsonl",
            f"/console/turns/{console_server.turn_ids[0]}",
        ):
            async with http.get(url + path, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/console/login", path
        r = await sign_in(http, url, "dmt_made-up")
        assert r.status == 401 and "not valid" in await r.text()
        forged = {
            "Cookie": "deskmate_console=eyJ1IjoiaGFubmFoLnNjaG1pZHRAbm9ydGh3aW5kLmV4YW1wbGUiLCJyIjoiYWRtaW4ifQ.Zz.bad"
        }
        async with http.get(url + "/console/queue", headers=forged, allow_redirects=False) as r:
            assert r.status == 302

    token = await issue_token(console_server.deskmate.ledger, LEAD)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await sign_in(http, url, token)).status == 302
        assert (await sign_in(http, url, token)).status == 401  # a token works once

    employee = await signed_in(console_server, EMPLOYEE)
    async with employee:
        for path in (
            "/console/queue",
            "/console/dashboard",
            "/console/export.csv",
            f"/console/turns/{console_server.turn_ids[0]}",
        ):
            async with employee.get(url + path) as r:
                body = await r.text()
                assert r.status == 403 and "for support leads and admins" in body, path
                assert "VPN" not in body


async def test_a_cookie_signed_with_another_secret_is_not_a_session(
    tmp_path,
    example_store_url,
    embedder,
    redis_prefix,
    console_server,
) -> None:
    lead = await signed_in(console_server, LEAD)
    cookie = next(c for c in lead.cookie_jar if c.key == "deskmate_console").value
    await lead.close()
    other = console_settings(tmp_path / "other", example_store_url, redis_prefix, console_secret="another-secret")
    async with running_server(embedder, **other) as server, aiohttp.ClientSession() as http:
        async with http.get(
            server.url + "/console/queue", headers={"Cookie": f"deskmate_console={cookie}"}, allow_redirects=False
        ) as r:
            assert r.status == 302


async def test_the_queue_puts_risky_unreviewed_answers_first_and_filters(console_server) -> None:
    lead = await signed_in(console_server, LEAD)
    async with lead:
        async with lead.get(console_server.url + "/console/queue") as r:
            page = await r.text()
        assert r.status == 200
        order = [page.index(q) for q in ("unladen swallow", "VPN password", "phishing")]
        assert order[0] < min(order[1:]), "the unanswered question should come first"
        assert "🔒" in page  # private conversations are marked
        async with lead.get(console_server.url + "/console/queue", params={"platform": "teams"}) as r:
            page = await r.text()
        assert "phishing" in page and "VPN password" not in page
        async with lead.get(console_server.url + "/console/queue", params={"q": "vpn"}) as r:
            page = await r.text()
        assert "VPN password" in page and "phishing" not in page


async def test_a_lead_rates_and_corrects_and_the_ledger_keeps_every_version(serve_console) -> None:
    from tests.support.console import seed

    # A generated answer, so that the page has a prompt (and its version) to show.
    async with serve_console(answer_strategy="generate") as console_server:
        turn_id = (await seed(console_server))[0]
        lead = await signed_in(console_server, LEAD)
        async with lead:
            async with lead.get(f"{console_server.url}/console/turns/{turn_id}") as r:
                page = await r.text()
            assert "How do I reset my VPN password?" in page and "Retrieved passages" in page
            assert "vpn-password-reset" in page and "prompt v1" in page
            csrf = csrf_of(page)
            form = {
                "csrf": csrf,
                "score": "2",
                "verdict": "incomplete",
                "note": "misses the MFA step",
                "correction": "Open the VPN portal, choose Reset, confirm with MFA.",
                "then": "stay",
            }
            async with lead.post(f"{console_server.url}/console/turns/{turn_id}/rate", data=form) as r:
                assert r.status == 200 and "Saved." in await r.text()
            async with lead.post(
                f"{console_server.url}/console/turns/{turn_id}/rate", data={**form, "score": "4", "verdict": "correct"}
            ) as r:
                assert r.status == 200
        ratings = await console_server.deskmate.ledger.ratings_of(turn_id)
        assert [(r.score, r.verdict, r.rater_key, r.rater_role, r.platform) for r in ratings] == [
            (2, "incomplete", LEAD, "lead", "console"),
            (4, "correct", LEAD, "lead", "console"),
        ]
        assert ratings[0].correction.startswith("Open the VPN portal")
        assert (await console_server.deskmate.ledger.get_turn(turn_id)).reviewed


async def test_bad_ratings_and_forged_forms_write_nothing(console_server) -> None:
    turn_id = console_server.turn_ids[0]
    rate = f"{console_server.url}/console/turns/{turn_id}/rate"
    lead = await signed_in(console_server, LEAD)
    async with lead:
        async with lead.get(f"{console_server.url}/console/turns/{turn_id}") as r:
            csrf = csrf_of(await r.text())
        async with lead.post(rate, data={"score": "4"}) as r:
            assert r.status == 403 and "expired" in await r.text()  # no CSRF token
        async with lead.post(rate, data={"csrf": "0" * 64, "score": "4"}) as r:
            assert r.status == 403
        async with lead.post(rate, data={"csrf": csrf, "score": "9"}) as r:
            assert r.status == 400 and "1 to 5" in await r.text()
        async with lead.post(rate, data={"csrf": csrf, "verdict": "meh"}) as r:
            assert r.status == 400 and "Unknown verdict" in await r.text()
        async with lead.post(rate, data={"csrf": csrf, "score": "3", "correction": "x" * 1_000_000}) as r:
            assert r.status == 400 and "limit is 8,000" in await r.text()
        async with lead.post(
            f"{console_server.url}/console/turns/no-such-turn/rate", data={"csrf": csrf, "score": "3"}
        ) as r:
            assert r.status == 404 and "forgotten" in await r.text()
    assert await console_server.deskmate.ledger.ratings_of(turn_id) == []


async def test_export_and_pseudonyms(tmp_path, serve_console) -> None:
    from tests.support.console import seed

    # Generated answers: the export's records carry the prompt as served.
    async with serve_console(console_pseudonymous=True, answer_strategy="generate") as server:
        ids = await seed(server)
        await server.deskmate.ledger.record_feedback(
            ids[0],
            ADMIN,
            platform="console",
            rater_role="admin",
            score=5,
            verdict="correct",
            correction="Fixed answer.",
        )
        await server.deskmate.ledger.record_feedback(
            ids[1], "ana.ribeiro@northwind.example", platform="teams", thumb=-1, note="wrong link"
        )
        admin = await signed_in(server, ADMIN)
        async with admin:
            async with admin.get(server.url + "/console/queue") as r:
                page = await r.text()
            assert EMPLOYEE not in page and "person-" in page
            async with admin.get(server.url + "/console/export.jsonl") as r:
                records = [json.loads(line) for line in (await r.text()).splitlines()]
            async with admin.get(server.url + "/console/export.csv", params={"platform": "teams"}) as r:
                csv_text = await r.text()
        by_id = {rec["turn_id"]: rec for rec in records}
        assert set(by_id) == {ids[0], ids[1]}
        assert by_id[ids[0]]["correction"] == "Fixed answer." and by_id[ids[0]]["score"] == 5
        assert by_id[ids[1]]["thumbs_down"] == 1 and by_id[ids[1]]["notes"] == ["wrong link"]
        assert by_id[ids[0]]["prompt"][0]["role"] == "system" and "user_key" not in by_id[ids[0]]
        assert csv_text.startswith("turn_id,") and ids[1] in csv_text and ids[0] not in csv_text

        out = tmp_path / "ratings.jsonl"
        done = await deskmate_from_async(
            ["export", "ratings", "--out", str(out)],
            cwd=tmp_path,
            DESKMATE_DATA_DIR=str(tmp_path),
            DESKMATE_LEDGER_URL=server.settings.ledger_url,
        )
        assert done.returncode == 0, done.stderr
        assert "2 rated turns" in done.stdout
        assert {json.loads(line)["turn_id"] for line in out.read_text().splitlines()} == {ids[0], ids[1]}


async def test_behind_an_sso_proxy_the_header_decides(tmp_path, serve_console) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("leads:\n  entra_groups: [6f1c0a2e-support-leads]\n")
    proxied = serve_console(
        roles_file=roles, console_auth_header="X-Forwarded-Email", console_groups_header="X-Forwarded-Groups"
    )
    async with proxied as server, aiohttp.ClientSession() as http:
        grouped = {"X-Forwarded-Email": "someone@northwind.example", "X-Forwarded-Groups": "x, 6F1C0A2E-support-leads"}
        async with http.get(server.url + "/console/queue", headers=grouped) as r:
            assert r.status == 200 and "support lead" in await r.text()
        async with http.get(server.url + "/console/queue", headers={"X-Forwarded-Email": EMPLOYEE}) as r:
            assert r.status == 403
        async with http.get(server.url + "/console/queue", allow_redirects=False) as r:
            assert r.status == 302  # no header, no session: sign in


async def test_forget_removes_a_person_everywhere(private_store_url, serve_console) -> None:
    from bot.feedback.forget import forget
    from tests.support.console import seed

    # A private store copy: forgetting deletes from the store, which other tests share.
    async with serve_console(store_url=private_store_url) as console_server:
        ids = await seed(console_server)
        deskmate = console_server.deskmate
        turn_id = ids[0]
        await deskmate.ledger.record_feedback(turn_id, LEAD, platform="console", rater_role="lead", score=3)
        assert await deskmate.retrieval.cache.keys("hist:*")
        report = await forget(deskmate, EMPLOYEE)
        assert report["turns"] == 2 and report["ratings_of_their_turns"] == 1
        assert report["cached_histories"] == 2 and report["directory_entries_and_facts"] > 0
        assert await deskmate.ledger.get_turn(turn_id) is None
        assert await deskmate.retrieval.store.get_user(EMPLOYEE) is None
        assert [t.user_key for t in await deskmate.ledger.recent_turns()] == ["ana.ribeiro@northwind.example"]

        lead = await signed_in(console_server, LEAD)
        async with lead:
            async with lead.get(f"{console_server.url}/console/turns/{turn_id}") as r:
                assert r.status == 404 and "forgotten" in await r.text()


def test_roles_list_shows_every_rule(tmp_path: Path) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("admins:\n  users: [it.lead@northwind.example]\nleads:\n  slack_groups: [S0LEADS]\n")
    env = {"DESKMATE_ROLES_FILE": str(roles), "DESKMATE_LEADS": "a@northwind.example, b@northwind.example"}
    done = deskmate(["roles", "list", "--json"], cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    rows = {(r["role"], r["kind"], r["who"]) for r in json.loads(done.stdout)}
    assert rows == {
        ("admin", "user", "it.lead@northwind.example"),
        ("lead", "slack group", "S0LEADS"),
        ("lead", "user", "a@northwind.example"),
        ("lead", "user", "b@northwind.example"),
    }
    roles.write_text("- just a list\n")
    bad = deskmate(["roles", "list"], cwd=tmp_path, **env)
    assert bad.returncode == 2 and "roles file" in bad.stderr
