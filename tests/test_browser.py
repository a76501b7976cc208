"""Headless Chromium loads the page, connects over loopback WebRTC and plays the avatar."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package (apt-get install chromium)
SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "out"
CHROMIUM_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOOPBACK_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ 127\.0\.0\.1 ")


def loopback_only(sdp: str) -> str:
    """Keep only 127.0.0.1 candidates so the server never sends checks anywhere else."""
    lines = [line for line in sdp.split("\r\n")
             if not line.startswith("a=candidate:") or LOOPBACK_CANDIDATE.match(line)]
    return "\r\n".join(lines)


async def keep_offers_on_loopback(page, observe=None) -> None:
    """Route the page's /offer through `loopback_only`; `observe(route, body)` may look at each one first."""

    async def filter_offer(route) -> None:
        body = json.loads(route.request.post_data)
        if observe is not None:
            observe(route, body)
        body["sdp"] = loopback_only(body["sdp"])
        await route.continue_(post_data=json.dumps(body))

    await page.route("**/offer", filter_offer)


async def inbound_stats(page) -> dict:
    return await page.evaluate("""async () => {
        const out = {};
        (await client.pc.getStats()).forEach((s) => {
            if (s.type === "inbound-rtp") out[s.kind] = {
                framesDecoded: s.framesDecoded, totalSamplesReceived: s.totalSamplesReceived,
                audioLevel: s.audioLevel, frameWidth: s.frameWidth, packetsReceived: s.packetsReceived, codec: s.codecId };
        });
        return out;
    }""")


async def test_page_connects_plays_and_speaks(server):
    from playwright.async_api import async_playwright

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 760})
            await keep_offers_on_loopback(page)
            await page.goto(server.url)
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=20000)
            first: dict = {}
            for _ in range(80):  # up to 20 s for the first second of video
                first = await inbound_stats(page)
                if first.get("video", {}).get("framesDecoded", 0) > 25:
                    break
                await page.wait_for_timeout(250)
            await page.wait_for_timeout(1000)
            second = await inbound_stats(page)
            assert second["video"]["framesDecoded"] - first["video"]["framesDecoded"] >= 15
            assert second["audio"]["totalSamplesReceived"] > first["audio"]["totalSamplesReceived"] > 0
            assert second["video"]["frameWidth"] == 160
            assert "lite" in await page.text_content("#engine")

            await page.fill("#text", "Hello from the browser test.")
            await page.click("#send")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'speaking'", timeout=10000)
            level = 0.0
            for _ in range(40):
                level = max(level, (await inbound_stats(page))["audio"].get("audioLevel") or 0.0)
                if level > 0.01:
                    break
                await page.wait_for_timeout(50)
            assert level > 0.01, "no audible speech reached the browser"
            await page.screenshot(path=str(SCREENSHOT_DIR / "browser.png"))
            await page.click("#interrupt")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'silent'", timeout=5000)
            await page.click("#disconnect")
        finally:
            await browser.close()
