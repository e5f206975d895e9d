"""The web page of `chatd serve` in a real browser: Playwright driving
Debian's chromium (installed by `make setup`, see APT_PACKAGES), against a
real worker and the fake LLM. A missing chromium fails the test: it never
skips. The screenshot is kept in test-artifacts/ (or $CHATD_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from http_support import bearer, serving
from worker_support import running_worker, worker_config

from chatd.testing import Factory, FakeLLM, Text

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium() -> str:
    path = os.environ.get("CHATD_CHROMIUM") or next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None
    )
    if path is None:
        pytest.fail("chromium is not installed: run `make setup` (it installs Debian's chromium)")
    return path


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


async def test_the_page_streams_an_answer_and_interrupts_a_second_chat(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    from playwright.async_api import async_playwright, expect

    org = factory.org()
    user = factory.user(org=org)
    provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url)
    factory.model_config(provider=provider, is_default=True)
    fake.script(
        Text("PostgreSQL keeps the truth.", chunks=6, delay=0.05),
        Text(" ".join(f"n{i}" for i in range(400)), chunks=400, delay=0.05),
    )
    token = bearer(user, org)["Authorization"].split(" ", 1)[1]
    artifacts = Path(os.environ.get("CHATD_TEST_ARTIFACTS") or REPO / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the loop work)
    async with serving(db) as url, running_worker(worker_config(db)), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 700})
            await page.goto(f"{url}/#token={token}")
            await page.fill("#text", "Where does chatd keep chats?")
            await page.click("#send button")
            await expect(page.locator("#messages .msg.assistant")).to_have_text("PostgreSQL keeps the truth.", timeout=20_000)
            await expect(page.locator("#chats li")).to_have_count(1)

            await page.click("#new-chat")
            await page.fill("#text", "Count to four hundred.")
            await page.click("#send button")
            await expect(page.locator("#streaming")).to_contain_text("n5", timeout=20_000)
            await expect(page.locator("#interrupt")).to_be_visible()
            await page.click("#interrupt")
            await expect(page.locator("#chat-status")).to_have_text("waiting", timeout=20_000)
            partial = await page.locator("#messages .msg.assistant").inner_text()
            assert partial.startswith("n0 n1") and "n399" not in partial
            await expect(page.locator("#chats li")).to_have_count(2)
            await expect(page.locator("#spend")).to_contain_text("spend: $")
            await page.screenshot(path=str(artifacts / "http-browser.png"), full_page=True)
        finally:
            await browser.close()
    assert (artifacts / "http-browser.png").stat().st_size > 0
    assert UUID(str(user))
