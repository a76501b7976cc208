"""Headless Chromium: the page's Talk toggle sends a (fake) microphone playing an espeak WAV."""

from __future__ import annotations

import wave

import aiohttp
import numpy as np

from tests.support.speech_sender import speak, word_error_rate
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOT_DIR, keep_offers_on_loopback

SENTENCE = "Please tell me the weather for tomorrow morning."


def write_wav(path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def collapse(states: list[str]) -> list[str]:
    """Consecutive repeats removed."""
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


async def test_talk_toggle_leads_to_a_transcript_bubble_and_an_answer(server, tmp_path):
    from playwright.async_api import async_playwright

    wav = tmp_path / "mic.wav"
    silence = np.zeros(16000 * 2, np.float32)
    write_wav(wav, np.concatenate([silence, speak(SENTENCE), silence, silence]))
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={wav}%noloop"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page()
            await keep_offers_on_loopback(page)
            await page.goto(server.url)
            await page.select_option("#listen-mode", "echo")
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=20000)
            await page.evaluate("""() => {  // every change of the turn pill, in order
                window.turns = [document.getElementById('turn').dataset.turn];
                new MutationObserver(() => window.turns.push(document.getElementById('turn').dataset.turn))
                    .observe(document.getElementById('turn'), {attributes: true, attributeFilter: ['data-turn']});
            }""")
            await page.click("#mic")
            await page.wait_for_selector(".bubble.user:not(.partial)", timeout=30000)
            await page.wait_for_selector(".bubble.avatar", timeout=15000)
            await page.wait_for_function("window.turns.includes('speaking') && window.turns.slice(-1)[0] === 'listening'",
                                         timeout=15000)  # the answer played out: the turn is the user's again
            turns = await page.evaluate("window.turns")
            heard = await page.text_content(".bubble.user:not(.partial)")
            answer = await page.text_content(".bubble.avatar")
            assert word_error_rate(SENTENCE, heard) <= 0.25, heard
            assert answer.strip() == heard.strip()
            assert collapse(turns)[-3:] == ["thinking", "speaking", "listening"], turns  # whose turn, as it went
            assert "mic" not in (await page.text_content("#vad"))  # the VAD pill shows the mic is live
            # Chromium cancels echo with the page's defaults and says so: the server's canceller stays off,
            # the uplink goes to the VAD untouched, as before --echo-cancel existed (issue 19)
            from listen.service import LISTEN_KEY
            [listening] = server.app[LISTEN_KEY].sessions.values()
            assert listening.echo is not None and not listening.echo.enabled
            assert not listening.echo.far.started and listening.echo.blocks == 0
            SCREENSHOT_DIR.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT_DIR / "listen.png"))
        finally:
            await browser.close()


async def test_a_turn_the_user_goes_on_with_stays_one_bubble_and_one_answer(data_dir, tmp_path):
    """A finished sentence, a pause, then more of it (see tests/test_turns.py): the page keeps one
    user bubble, redone with the whole sentence, and only the answer to the whole."""
    from playwright.async_api import async_playwright

    from tests.conftest import server_args, start_server
    from tests.support.hesitations import full_text, hesitant

    # the first half ends at the pause whatever Smart Turn says (~0.75): if it calls it unfinished, Whisper's
    # ~0.96 sure full stop ends it after 480 ms ("Good morning.", Smart Turn ~0.98 offline, once stayed open)
    pair = ("What time is it?", "And when does the museum open?")
    wav = tmp_path / "mic.wav"
    silence = np.zeros(16000 * 2, np.float32)
    write_wav(wav, np.concatenate([silence, hesitant(*pair, pause_s=1.2), silence, silence]))
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={wav}%noloop"]
    running = await start_server(server_args(data_dir, "--listen", "echo", "--turn-fallback-silence-ms", "3000"))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page()
            await keep_offers_on_loopback(page)
            await page.goto(running.url)
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=20000)
            await page.click("#mic")
            await page.wait_for_function(
                "[...document.querySelectorAll('.bubble.user:not(.partial)')].some(b => b.textContent.includes('museum'))",
                timeout=40000)
            await page.wait_for_function(
                "[...document.querySelectorAll('.bubble.avatar')].some(b => b.textContent.includes('museum'))",
                timeout=15000)
            users = await page.eval_on_selector_all(".bubble.user", "items => items.map(b => b.textContent)")
            answers = await page.eval_on_selector_all(".bubble.avatar", "items => items.map(b => b.textContent)")
            from listen.service import LISTEN_KEY
            [listening] = running.app[LISTEN_KEY].sessions.values()
            assert listening.echo is not None and not listening.echo.enabled  # Chromium's own canceller
            async with aiohttp.ClientSession() as http:
                metrics = await (await http.get(f"{running.url}/metrics")).text()
            assert "avatar_turns_continued_total 1.0" in metrics, [l for l in metrics.splitlines() if "turns_" in l]
            assert len(users) == 1 and word_error_rate(full_text(pair), users[0]) <= 0.25, users
            assert [a.strip() for a in answers] == [users[0].strip()], answers  # echo: the whole sentence, once
        finally:
            await browser.close()
            await running.runner.cleanup()
