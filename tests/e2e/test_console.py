"""The review console in headless Chromium: a lead triages with the keyboard, an employee is
turned away, the dashboard draws its plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.console.auth import issue_token
from tests.support.browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.support.console import EMPLOYEE, LEAD, seed
from tests.support.server import ServerFactory


@pytest.mark.slow
async def test_a_lead_reviews_with_the_keyboard_and_an_employee_is_refused(serve_console: ServerFactory) -> None:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (scripts/ensure-browser.sh)")
    async with serve_console() as server, async_playwright() as pw:
        ids = await seed(server)
        ledger = server.deskmate.ledger
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

        # An employee signs in and sees a refusal, not the queue.
        employee = await browser.new_page()
        await employee.goto(server.url + "/console/login")
        await employee.fill("#token", await issue_token(ledger, EMPLOYEE))
        await employee.click("button[type=submit]")
        await employee.wait_for_selector("text=Not for you")
        assert "unladen swallow" not in await employee.content()

        # A lead signs in, opens the riskiest answer from the queue and reviews it by keyboard.
        page = await browser.new_page()
        await page.goto(server.url + "/console/queue")
        assert page.url.endswith("/console/login")
        await page.fill("#token", await issue_token(ledger, LEAD))
        await page.click("button[type=submit]")
        await page.wait_for_selector("table.queue tbody tr.selected")
        assert "unladen swallow" in await page.locator("tr.selected").inner_text()
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#review")
        await page.keyboard.press("2")
        await page.keyboard.press("s")
        await page.keyboard.press("n")
        await page.keyboard.type("Out of scope: should say it cannot help")
        await page.keyboard.press("Escape")
        await page.keyboard.press("e")
        await page.keyboard.press("Control+A")
        await page.keyboard.type("I can only help with Northwind IT and HR questions.")
        await page.keyboard.press("Control+Enter")
        await page.wait_for_selector("text=Saved.")
        [rating] = await ledger.ratings_of(ids[2])
        assert (rating.score, rating.verdict, rating.rater_key, rating.platform) == (
            2,
            "should_not_answer",
            LEAD,
            "console",
        )
        assert rating.note == "Out of scope: should say it cannot help"
        assert rating.correction == "I can only help with Northwind IT and HR questions."
        assert ids[2] not in page.url  # "save and next" moved on to the next unreviewed answer

        # The dashboard draws its four plots.
        await page.goto(server.url + "/console/dashboard")
        await page.wait_for_function("document.querySelectorAll('.plot canvas').length === 4")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-dashboard.png"), full_page=True)
        await browser.close()
