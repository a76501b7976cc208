"""web/avatar.html in headless Chromium: upload the astronaut, watch progress, preview, connect with it."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from tests.conftest import server_args, start_server
from tests.test_avatar_tasks import astronaut_jpeg
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOT_DIR, keep_offers_on_loopback


@pytest.fixture
async def task_server(tmp_path, data_dir):
    (tmp_path / "avatars").mkdir()
    shutil.copytree(data_dir / "avatars" / "testface", tmp_path / "avatars" / "testface")
    running = await start_server(server_args(tmp_path))
    yield running
    await running.runner.cleanup()


async def test_avatar_page_prepares_previews_and_connects(task_server):
    from playwright.async_api import async_playwright

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 760})
            await keep_offers_on_loopback(page)
            await page.goto(f"{task_server.url}/avatar.html")
            await page.set_input_files("#file", files=[{"name": "astronaut.jpg", "mimeType": "image/jpeg",
                                                        "buffer": astronaut_jpeg()}])
            await page.fill("#avatar_id", "page_astro")
            await page.fill("#loop_seconds", "0.4")
            await page.click("#start")
            await page.wait_for_function("document.getElementById('status').textContent.includes('completed')",
                                         timeout=90000)
            assert await page.evaluate("document.getElementById('progress').value") == 100
            await page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=20000)
            assert "page_astro" in await page.text_content("#tasks")
            await page.screenshot(path=str(SCREENSHOT_DIR / "avatar-page.png"))
            grey = cv2.imencode(".jpg", np.full((128, 128, 3), 128, np.uint8))[1].tobytes()
            await page.set_input_files("#file", files=[{"name": "grey.jpg", "mimeType": "image/jpeg", "buffer": grey}])
            await page.fill("#avatar_id", "page_faceless")
            await page.click("#start")
            await page.wait_for_function("document.getElementById('status').textContent.includes('failed')",
                                         timeout=60000)
            assert await page.is_visible("#error") and await page.text_content("#error")  # the task's error_msg
            await page.wait_for_function("document.getElementById('tasks').textContent.includes('page_faceless')")
            await page.evaluate("preview('page_astro')")  # back to the completed one, and its "use" link
            await page.click("#use")
            await page.wait_for_url("**/?avatar=page_astro")
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                                         timeout=20000)
            sessions = task_server.context.sessions.all()
            assert [s.engine.avatar.avatar_id for s in sessions] == ["page_astro"]
        finally:
            await browser.close()
