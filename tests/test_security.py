"""--auth-token and origins: the API needs the token, the page and /config do not, and the page
(in Chromium) takes the token from its URL fragment."""

from __future__ import annotations

import logging

import pytest

from server.security import AccessPolicy, RedactingAccessLogger
from tests.conftest import server_args, start_server
from tests.support.rtc_client import ReceiverClient
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, keep_offers_on_loopback

TOKEN = "s3cret-token"


@pytest.fixture
async def guarded(data_dir):
    running = await start_server(server_args(data_dir, "--auth-token", TOKEN))
    yield running
    await running.runner.cleanup()


async def test_token_guards_the_api_but_not_the_page(guarded, http):
    for path in ("/", "/config", "/web/avatar-client.js", "/avatar.html"):
        async with http.get(f"{guarded.url}{path}") as response:
            assert response.status == 200, path
    async with http.get(f"{guarded.url}/config") as response:
        assert (await response.json())["auth"] is True
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with http.post(f"{guarded.url}/is_speaking", json={"sessionid": "x"}, headers=headers) as response:
            body = await response.json()
            assert response.status == 401 and "Bearer TOKEN" in body["msg"], (headers, body)
    async with http.get(f"{guarded.url}/events?sessionid=x") as response:
        assert response.status == 401

    http.headers["Authorization"] = f"Bearer {TOKEN}"  # the receiver's /offer carries it
    client = ReceiverClient(guarded.url, keep_video=False)
    await client.connect(http)
    await client.wait_for(video_frames=3)
    del http.headers["Authorization"]
    async with http.post(f"{guarded.url}/is_speaking", json={"sessionid": client.sessionid},
                         headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200 and (await response.json())["data"] is False
    async with http.get(f"{guarded.url}/events?sessionid={client.sessionid}&token={TOKEN}") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
    await client.close()


def test_exposed_without_token_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="security"):
        AccessPolicy(None, []).warn_if_exposed("127.0.0.1")
        assert not caplog.records
        AccessPolicy("t", []).warn_if_exposed("0.0.0.0")
        assert not caplog.records
        AccessPolicy(None, []).warn_if_exposed("0.0.0.0")
    assert "without --auth-token" in caplog.text


def test_bad_allowed_origin_is_refused_at_start():
    with pytest.raises(ValueError, match="bad origin"):
        AccessPolicy(None, ["evil.example/path"])


def test_access_log_hides_session_ids_and_tokens():
    from unittest import mock

    records: list[str] = []
    log = logging.getLogger("test-access")
    log.setLevel(logging.INFO)
    log.addHandler(handler := logging.Handler())
    handler.emit = lambda record: records.append(record.getMessage())
    request = mock.Mock(path="/events", query_string="sessionid=abcdef123456&token=tok&x=1", method="GET",
                        remote="127.0.0.1", query={"sessionid": "abcdef123456", "token": "tok", "x": "1"})
    RedactingAccessLogger(log, "").log(request, mock.Mock(status=200), 0.01)
    assert records and "abcdef123456" not in records[0] and "tok&" not in records[0] and "x=1" in records[0]


async def test_page_takes_the_token_from_its_fragment(guarded):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            seen_auth: list[str | None] = []

            await keep_offers_on_loopback(
                page, lambda route, _: seen_auth.append(route.request.headers.get("authorization")))
            await page.goto(f"{guarded.url}/#token={TOKEN}")
            assert "token" not in page.url  # dropped from the address bar and the history
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('state').textContent === 'connected'", timeout=20000)
            assert seen_auth == [f"Bearer {TOKEN}"]
            await page.fill("#text", "The token works.")
            await page.click("#send")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'speaking'", timeout=10000)
        finally:
            await browser.close()
