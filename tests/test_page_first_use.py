"""Our page as a first-time user meets it, in headless Chromium: before, while and after connecting."""

from __future__ import annotations

import asyncio
import json
import re

from tests.conftest import PHOTO_AVATAR_ID, TEST_AVATAR_ID, server_args, start_server
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOT_DIR, loopback_only

OFFER_DELAY_S = 1.0


async def disabled(page, element_id: str) -> bool:
    return await page.evaluate(f"document.getElementById('{element_id}').disabled")


async def test_first_use_of_the_page(server):
    from playwright.async_api import async_playwright

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    human_bodies: list[dict] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 760})

            async def slow_offer(route) -> None:
                body = json.loads(route.request.post_data)
                body["sdp"] = loopback_only(body["sdp"])
                await asyncio.sleep(OFFER_DELAY_S)  # a slow server: the page must not take text meanwhile
                await route.continue_(post_data=json.dumps(body))

            async def record_human(route) -> None:
                human_bodies.append(json.loads(route.request.post_data))
                await route.continue_()

            await page.route("**/offer", slow_offer)
            await page.route(re.compile(r"/human(\?|$)"), record_human)  # the page adds ?sessionid= for proxies
            await page.goto(server.url)
            await page.wait_for_function("document.getElementById('avatar').options.length > 1")

            # before connecting: every control says what it is and what to do
            assert await page.text_content("#engine") == "engine: lite"
            options = await page.eval_on_selector_all("#avatar option", "os => os.map(o => o.value)")
            assert sorted(options) == sorted([TEST_AVATAR_ID, PHOTO_AVATAR_ID])
            assert await page.input_value("#avatar") == TEST_AVATAR_ID  # the server's default
            assert await page.is_visible("#video-hint")
            assert "Connect" in await page.text_content("#video-hint")
            assert await disabled(page, "text") and await disabled(page, "send")
            assert await page.evaluate("document.querySelector('#mode option[value=chat]').disabled")
            assert "chat is off" in await page.text_content("#chat-hint") and await page.is_visible("#chat-hint")
            await page.screenshot(path=str(SCREENSHOT_DIR / "page-before-connect.png"))

            voices = await page.eval_on_selector_all("#voice option", "os => os.map(o => [o.value, o.text])")
            assert voices[0] == ["", "server default (espeak)"]
            piper = [value for value, label in voices if "piper" in label]
            assert piper and json.loads(piper[0])["backend"] == "piper", voices

            await page.select_option("#avatar", PHOTO_AVATAR_ID)
            await page.select_option("#voice", piper[0])
            await page.click("#connect")
            assert await disabled(page, "text"), "text accepted before the session exists"
            assert await disabled(page, "avatar") and await disabled(page, "voice")
            await page.wait_for_function("document.body.dataset.sessionid", timeout=20000)
            assert not await disabled(page, "text")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                                         timeout=20000)
            await page.wait_for_selector("#video-hint", state="hidden", timeout=20000)
            sessionid = await page.evaluate("document.body.dataset.sessionid")
            assert server.context.sessions.get(sessionid).engine.avatar.avatar_id == PHOTO_AVATAR_ID
            assert server.context.sessions.get(sessionid).tts_backend.name == "piper"  # the voice menu's pick

            await page.fill("#text", "Hello, first time here.")
            await page.press("#text", "Enter")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'speaking'",
                                         timeout=10000)
            assert human_bodies == [{"sessionid": sessionid, "text": "Hello, first time here.", "type": "echo",
                                     "interrupt": True}]
            assert await page.input_value("#text") == ""
            await page.fill("#text", "line one")
            await page.press("#text", "Shift+Enter")
            assert len(human_bodies) == 1 and "\n" in await page.input_value("#text")

            await page.fill("#volume", "0.3")
            assert abs(await page.evaluate("document.getElementById('video').volume") - 0.3) < 1e-6
            await page.screenshot(path=str(SCREENSHOT_DIR / "page-connected.png"))
            await page.click("#disconnect")
            assert await page.is_visible("#video-hint") and await disabled(page, "text")
        finally:
            await browser.close()


async def test_config_says_whether_chat_works(data_dir, http, llm_server):
    running = await start_server(server_args(data_dir, "--llm-base-url", llm_server.base_url, "--llm-model", "m"))
    try:
        async with http.get(f"{running.url}/config") as response:
            config = await response.json()
    finally:
        await running.runner.cleanup()
    assert config["chat"] is True and config["chat_problem"] is None
