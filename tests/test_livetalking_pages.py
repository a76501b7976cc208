"""What LiveTalking's pages need: their URLs, no-heartbeat peers kept alive, numeric ids, admin routes, API shapes.

The pages themselves are not copied here: the requests below (and the small page
driven in Chromium) make the same calls with the same bodies as their index.html,
webrtcapi.html, dashboard.html and client.js.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from httpapi import BadRequest

from tests.conftest import server_args, start_server
from tests.support.rtc_client import ReceiverClient
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOT_DIR, loopback_only

IDLE_TIMEOUT = "2"


def tone_wav(seconds: float = 0.5) -> bytes:
    samples = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(16000 * seconds)) / 16000) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


@pytest.fixture
async def lt_server(data_dir):
    running = await start_server(server_args(data_dir, "--numeric-session-ids", "--idle-timeout", IDLE_TIMEOUT))
    yield running
    await running.runner.cleanup()


async def test_every_web_file_is_served_at_its_own_name(server, http):
    for path, kind in (("/index.html", "text/html"), ("/avatar.html", "text/html"),
                       ("/avatar-client.js", "javascript"), ("/style.css", "text/css")):
        async with http.get(server.url + path) as response:
            assert response.status == 200 and kind in response.headers["Content-Type"], path
    async with http.get(server.url + "/") as response:
        assert "avatar-client.js" in await response.text()  # our page keeps / and its renamed script
    for path in ("/client.js", "/nothing.html", "/%2e%2e/app.py", "/..%2fapp.py"):
        async with http.get(server.url + path) as response:
            assert response.status == 404, path
    async with http.get(server.url + "/config") as response:  # fixed routes win over file names
        assert (await response.json())["code"] == 0


async def test_a_connected_peer_without_data_channel_is_not_idle(lt_server, http):
    """Their pages open no data channel and send no heartbeat: RTCP reports keep the session."""
    live, silent = ReceiverClient(lt_server.url), ReceiverClient(lt_server.url)
    try:
        await live.connect(http)
        await silent.connect(http)
        silent.stop_reports()
        await live.wait_for(video_frames=5)
        sessions = lt_server.context.sessions
        deadline = time.monotonic() + 20
        while sessions.get(silent.sessionid) is not None:
            assert time.monotonic() < deadline, "a peer that sends nothing was never reaped"
            await asyncio.sleep(0.2)
        session = sessions.get(live.sessionid)
        while time.monotonic() - session.created < 3 * float(IDLE_TIMEOUT):  # well past the idle timeout
            await asyncio.sleep(0.2)
        frames = len(live.video)
        await live.wait_for(video_frames=frames + 10)
        assert sessions.get(live.sessionid) is not None and live.pc.connectionState == "connected"
    finally:
        await live.close()
        await silent.close()


async def post(http, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def test_their_requests_get_the_answers_they_read(lt_server, http):
    """client.js negotiate, then index.html/webrtcapi.html/dashboard.html calls, with parseInt'ed ids."""
    client = ReceiverClient(lt_server.url)
    try:
        answer = await client.connect(http)  # POST /offer {sdp, type} -> {sdp, type, sessionid}
        assert {"sdp", "type", "sessionid"} <= answer.keys() and answer["type"] == "answer"
        assert len(answer["sessionid"]) == 15 and answer["sessionid"].isdigit()
        sid = int(answer["sessionid"])  # what parseInt gives their pages
        base = lt_server.url
        status, body = await post(http, f"{base}/human", {"text": "Hello there.", "type": "echo",
                                                          "interrupt": True, "sessionid": sid})
        assert status == 200 and body["code"] == 0
        deadline = time.monotonic() + 15
        while True:  # dashboard.html polls /is_speaking
            status, body = await post(http, f"{base}/is_speaking", {"sessionid": sid})
            assert status == 200 and body["code"] == 0 and isinstance(body["data"], bool)
            if body["data"]:
                break
            assert time.monotonic() < deadline, "never reported speaking"
            await asyncio.sleep(0.1)
        status, body = await post(http, f"{base}/interrupt_talk", {"sessionid": sid})
        assert status == 200 and body["code"] == 0
        form = aiohttp.FormData()
        form.add_field("file", tone_wav(), filename="a.wav", content_type="audio/wav")
        form.add_field("sessionid", str(sid))
        async with http.post(f"{base}/humanaudio", data=form) as response:
            assert response.status == 200 and (await response.json())["code"] == 0
        status, body = await post(http, f"{base}/human", {"text": "x", "type": "echo", "sessionid": 123})
        assert status == 404  # a number that is no session
        status, body = await post(http, f"{base}/human", {"text": "x", "type": "echo", "sessionid": True})
        assert status == 400
    finally:
        await client.close()


async def test_numbers_are_not_session_ids_unless_asked(server, http):
    client = ReceiverClient(server.url)
    try:
        answer = await client.connect(http)
        assert len(answer["sessionid"]) == 36  # a uuid by default
        status, body = await post(http, f"{server.url}/is_speaking", {"sessionid": 123456789012345})
        assert status == 400 and "string" in body["msg"]
    finally:
        await client.close()


async def test_admin_routes_answer_this_machine_without_a_token_and_the_token_otherwise(data_dir, http):
    """LiveTalking's admin.html sends no token: without --auth-token the routes answer local requests only."""
    plain = await start_server(server_args(data_dir))
    client = ReceiverClient(plain.url)
    try:
        await client.connect(http)
        async with http.get(plain.url + "/api/admin/config") as response:  # 127.0.0.1 to 127.0.0.1: allowed
            assert response.status == 200
            config = (await response.json())["data"]["config"]
        assert config["model"] == "lite" and config["avatar_id"] == "testface" and config["transport"] == "webrtc"
        assert config["listenport"] == plain.context.args.listenport and config["REF_FILE"] == ""
        async with http.get(plain.url + "/api/admin/sessions") as response:
            sessions = (await response.json())["data"]["sessions"]
        assert [s["sessionid"] for s in sessions] == [client.sessionid]
        assert sessions[0]["avatar_id"] == "testface" and sessions[0]["model"] == "lite"
        assert sessions[0]["transport"] == "webrtc" and sessions[0]["recording"] is False
        for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"X-Real-IP": "203.0.113.7"},
                        {"Forwarded": "for=203.0.113.7"},  # relayed by a proxy on this machine
                        {"Host": "rebound.example:8010"}):  # a DNS-rebinding page reaching 127.0.0.1
            for path in ("/api/admin/config", "/api/admin/sessions"):
                async with http.get(plain.url + path, headers=headers) as response:
                    body = await response.json()
                assert response.status == 403 and "--auth-token" in body["msg"], (headers, path)
                assert client.sessionid not in json.dumps(body)
        # a client on another machine: the same request, its remote address not loopback
        for remote, status in (("203.0.113.7", 403), ("::ffff:10.0.0.2", 403), ("127.0.0.1", 200), ("::1", 200)):
            request = make_mocked_request("GET", "/api/admin/sessions", headers={"Host": "127.0.0.1:8010"},
                                          app=plain.app).clone(remote=remote)
            match = await plain.app.router.resolve(request)
            try:
                answered = (await match.handler(request)).status
            except BadRequest as exc:
                answered = exc.status
            assert answered == status, remote
    finally:
        await client.close()
        await plain.runner.cleanup()

    guarded = await start_server(server_args(data_dir, "--auth-token", "admin-secret"))
    client = ReceiverClient(guarded.url)
    headers = {"Authorization": "Bearer admin-secret"}
    try:
        for path in ("/api/admin/config", "/api/admin/sessions"):  # the token middleware guards them, local or not
            async with http.get(guarded.url + path) as response:
                assert response.status == 401, path
        http.headers.update(headers)  # the receiver's /offer carries it
        await client.connect(http)
        async with http.get(guarded.url + "/api/admin/config", headers=headers) as response:
            config = (await response.json())["data"]["config"]
        assert config["auth_token"] == "***" and "admin-secret" not in json.dumps(config)
        assert config["max_session"] == guarded.context.args.max_session
        async with http.get(guarded.url + "/api/admin/sessions", headers={**headers, "X-Forwarded-For": "1.2.3.4"}) \
                as response:  # with the token, from anywhere
            sessions = (await response.json())["data"]["sessions"]
        assert [s["sessionid"] for s in sessions] == [client.sessionid]
    finally:
        await client.close()
        await guarded.runner.cleanup()


LIVETALKING_STYLE_PAGE = """<!doctype html><html><body>
<video id="video" autoplay playsinline></video><input id="sessionid" value="0">
<script>
// The calls a LiveTalking page makes, written for this test: negotiate without trickle ICE and
// without a data channel, keep the session id as parseInt does, then talk over plain fetches.
var pc = null;
async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(body)});
  return response.json();
}
async function start() {
  pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  pc.addEventListener("track", (e) => { document.getElementById("video").srcObject = e.streams[0]; });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
  });
  const answer = await post("/offer", {sdp: pc.localDescription.sdp, type: pc.localDescription.type});
  document.getElementById("sessionid").value = answer.sessionid;
  await pc.setRemoteDescription(answer);
}
function sid() { return parseInt(document.getElementById("sessionid").value); }
async function say(text) { return post("/human", {text: text, type: "echo", interrupt: true, sessionid: sid()}); }
async function speaking() { return post("/is_speaking", {sessionid: sid()}); }
async function stop() { return post("/interrupt_talk", {sessionid: sid()}); }
async function upload(bytes) {
  const form = new FormData();
  form.append("file", new Blob([new Uint8Array(bytes)], {type: "audio/wav"}), "a.wav");
  form.append("sessionid", sid());
  return (await fetch("/humanaudio", {method: "POST", body: form})).json();
}
</script></body></html>"""


async def test_a_livetalking_style_page_in_chromium_stays_connected_and_talks(lt_server):
    from playwright.async_api import async_playwright

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()

            async def filter_offer(route) -> None:
                body = json.loads(route.request.post_data)
                body["sdp"] = loopback_only(body["sdp"])
                await route.continue_(post_data=json.dumps(body))

            async def serve_page(route) -> None:
                await route.fulfill(status=200, content_type="text/html", body=LIVETALKING_STYLE_PAGE)

            await page.route("**/offer", filter_offer)
            await page.route("**/lt-style.html", serve_page)
            await page.goto(f"{lt_server.url}/lt-style.html")
            await page.evaluate("start()")
            await page.wait_for_function("pc.connectionState === 'connected'", timeout=20000)
            assert (await page.evaluate("async () => (await say('Hello from an old page.')).code")) == 0
            deadline = time.monotonic() + 15
            while not await page.evaluate("async () => (await speaking()).data"):
                assert time.monotonic() < deadline, "the page never saw the avatar speaking"
                await asyncio.sleep(0.2)
            assert (await page.evaluate("async () => (await stop()).code")) == 0
            assert (await page.evaluate(f"async () => (await upload({list(tone_wav(0.2))})).code")) == 0
            session = lt_server.context.sessions.all()[0]
            deadline = time.monotonic() + 3 * float(IDLE_TIMEOUT) + 2
            while time.monotonic() - session.last_activity < 3 * float(IDLE_TIMEOUT) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # no request from the page now; only its RTCP reports
            assert await page.evaluate("pc.connectionState") == "connected"
            assert lt_server.context.sessions.get(session.id) is session and not session.closed
        finally:
            await browser.close()
