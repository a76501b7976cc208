"""TURN that is tested: coturn (Debian) on loopback, Chromium forced to relay-only, media flowing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import server_args, start_server
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, inbound_stats, loopback_only
from tests.support.turn_server import Coturn


@pytest.fixture
def coturn(tmp_path):
    server = Coturn(tmp_path / "turn").start()
    yield server
    server.stop()


async def test_relay_only_browser_streams_through_coturn(data_dir, coturn):
    from playwright.async_api import async_playwright

    server = await start_server(server_args(data_dir, "--ice-server", coturn.url))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                sent: list[str] = []

                async def filter_offer(route) -> None:
                    body = json.loads(route.request.post_data)
                    body["sdp"] = loopback_only(body["sdp"])
                    sent.append(body["sdp"])
                    await route.continue_(post_data=json.dumps(body))

                await page.route("**/offer", filter_offer)
                await page.goto(f"{server.url}/?relay=1")
                await page.click("#connect")
                await page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                                             timeout=30000)
                await page.wait_for_function("(document.getElementById('ice').dataset.pair || '') !== ''", timeout=10000)
                pair = await page.get_attribute("#ice", "data-pair")
                first: dict = {}
                for _ in range(80):  # up to 20 s until both tracks have stats and video is decoding
                    first = await inbound_stats(page)
                    if "audio" in first and first.get("video", {}).get("framesDecoded", 0) > 5:
                        break
                    await page.wait_for_timeout(250)
                await page.wait_for_timeout(1500)
                second = await inbound_stats(page)
            finally:
                await browser.close()
    finally:
        await server.runner.cleanup()
    candidates = [line for line in sent[0].split("\r\n") if line.startswith("a=candidate:")]
    assert candidates and all(" typ relay" in line for line in candidates), candidates  # the browser offered only relays
    assert pair.startswith("relay/"), pair  # and the media path in use goes through the TURN server
    assert second["video"]["framesDecoded"] - first["video"]["framesDecoded"] >= 15
    assert second["audio"]["totalSamplesReceived"] > first["audio"]["totalSamplesReceived"]


async def test_page_says_what_to_do_when_ice_fails(data_dir):
    """Relay-only with no TURN server: there is no path, and the page must say so."""
    from playwright.async_api import async_playwright

    server = await start_server(server_args(data_dir))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{server.url}/?relay=1")
                await page.click("#connect")
                # the ice pill exists only once the page has built its peer connection (after /config)
                await page.wait_for_function("document.getElementById('ice')?.classList.contains('bad')", timeout=40000)
                log_text = await page.text_content("#log")
            finally:
                await browser.close()
    finally:
        await server.runner.cleanup()
    assert "--ice-server turn:" in log_text, log_text
