"""The web chat in headless Chromium, with the real local model behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.support.server import running_server


@pytest.mark.slow
async def test_a_question_gets_a_streamed_answer_with_its_source(
    tmp_path: Path, example_store_url: str, embedder
) -> None:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (scripts/ensure-browser.sh)")
    async with (
        running_server(
            embedder,
            data_dir=tmp_path,
            store_url=example_store_url,
            ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
            generator_url="local",
            generator_threads=2,
        ) as server,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.wait_for_selector("#user option", state="attached")
        await page.select_option("#user", "sofia.martins@northwind.example")
        await page.fill("#question", "How do I reset my VPN password?")
        await page.keyboard.press("Enter")
        sources = page.locator("[data-role=sources] a")
        await sources.first.wait_for(timeout=120_000)
        assert "Resetting your VPN password" in await sources.first.inner_text()
        assert await sources.first.get_attribute("href") == "https://intranet.northwind.example/help/vpn-password-reset"
        answer = await page.locator("[data-role=answer]").first.inner_text()
        assert len(answer) > 20
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)
        await browser.close()
        turns = await server.deskmate.ledger.recent_turns()
        assert turns[0].status == "answered" and turns[0].user_key == "sofia.martins@northwind.example"
