"""What LiveTalking's pages need: their URLs, no-heartbeat peers kept alive, numeric ids, admin routes, API shapes.

The pages themselves are not copied here: the requests below (and the small page
driven in Chromium) make the same calls with the same bodies as their index.html,
webrtcapi.html, dashboard.html and client.js.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
import wave

import aiohttp
import av
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


# Written for these tests, not copied: the calls LiveTalking's avatar.html, admin.html and
# webrtcapi-asr.html make, with the bodies they send and the fields of the answers they read.
THEIR_TOOLS_PAGE = """<!doctype html><html><body>
<form id="taskForm">
  <select name="model"><option value="wav2lip">Wav2Lip</option><option value="musetalk">MuseTalk</option></select>
  <input name="avatar_id"><input type="file" name="video_file" accept="video/*">
  <input name="img_size" value="256"><input name="bbox_shift" value="0">
  <input name="pads" value="0 10 0 0"><input name="face_det_batch_size" value="4">
</form>
<ul id="taskList"></ul><table id="configTable"></table><ul id="sessions"></ul><span id="sessionCount">0</span>
<script>
// avatar.html: submit the form as it is, list data.tasks with model_type, start_time, progress, error_msg
async function submitTask() {
  const response = await fetch('/api/avatar/task', {method: 'POST', body: new FormData(document.getElementById('taskForm'))});
  return response.json();
}
async function refreshTasks() {
  const result = await (await fetch('/api/avatar/tasks')).json();
  if (result.code === 0) renderTasks(result.data.tasks);
}
function renderTasks(tasks) {
  document.getElementById('taskList').replaceChildren(...tasks.map((task) => {
    const item = document.createElement('li');
    const date = new Date(task.start_time * 1000).toLocaleString();
    item.textContent = `${task.task_id} ${task.model_type} ${task.avatar_id} ${task.status.toUpperCase()} ${date} ` +
                       `${task.progress}%` + (task.error_msg ? ` error: ${task.error_msg}` : '');
    item.dataset.status = task.status;
    return item;
  }));
}
// admin.html: data.config read by key, data.sessions listed
const configLabels = ['model', 'avatar_id', 'tts', 'REF_FILE', 'transport', 'listenport', 'batch_size', 'fps', 'push_url'];
async function fetchConfig() {
  const result = await (await fetch('/api/admin/config')).json();
  if (result.code !== 0) return;
  const config = result.data.config;
  document.getElementById('configTable').replaceChildren(...configLabels.filter((key) => config[key] !== undefined)
    .map((key) => { const row = document.createElement('tr'); row.textContent = `${key}=${config[key]}`; return row; }));
}
async function fetchSessions() {
  const result = await (await fetch('/api/admin/sessions')).json();
  if (result.code !== 0) return;
  document.getElementById('sessions').replaceChildren(...result.data.sessions.map((session) => {
    const item = document.createElement('li');
    item.textContent = `SID: ${session.sessionid} ${session.transport || 'default'} ${session.avatar_id} ` +
                       `${session.model} ${session.speaking ? 'speaking' : 'silent'}${session.recording ? ' recording' : ''}`;
    return item;
  }));
  document.getElementById('sessionCount').textContent = result.data.sessions.length;
}
// webrtcapi-asr.html: its record buttons post no sessionid and go by response.ok
async function record(type) {
  const response = await fetch('/record', {body: JSON.stringify({type: type}),
                                           headers: {'Content-Type': 'application/json'}, method: 'POST'});
  return {ok: response.ok, body: await response.json()};
}
</script></body></html>"""


def faceless_mp4(seconds: float, side: int = 128, fps: int = 25) -> bytes:
    """A clip of flat grey frames: readable, but no face to build an avatar from."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 128, np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


async def serve_on(page, url: str, name: str, html: str) -> None:
    async def fulfil(route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=html)

    await page.route(f"**/{name}", fulfil)
    await page.goto(f"{url}/{name}")


async def test_their_avatar_admin_and_record_calls_in_chromium(tmp_path, data_dir, http):
    from playwright.async_api import async_playwright

    from tests.test_avatar_tasks import astronaut_mp4

    (tmp_path / "avatars").mkdir()
    shutil.copytree(data_dir / "avatars" / "testface", tmp_path / "avatars" / "testface")
    running = await start_server(server_args(tmp_path, "--numeric-session-ids", "--avatar-upload-mb", "2",
                                             "--avatar-max-seconds", "1"))
    client = ReceiverClient(running.url)
    try:
        await client.connect(http)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await serve_on(page, running.url, "their-tools.html", THEIR_TOOLS_PAGE)
                for avatar_id, clip in (("lt_video", astronaut_mp4(0.4)), ("lt_faceless", faceless_mp4(0.4))):
                    await page.fill("input[name=avatar_id]", avatar_id)
                    await page.set_input_files("input[name=video_file]", files=[
                        {"name": "clip.mp4", "mimeType": "video/mp4", "buffer": clip}])
                    answer = await page.evaluate("submitTask()")
                    assert answer["code"] == 0 and answer["data"]["task_id"], answer
                deadline = time.monotonic() + 120
                while True:  # avatar.html refreshes the list every 3 s; here as often as needed
                    await page.evaluate("refreshTasks()")
                    states = await page.eval_on_selector_all("#taskList li", "items => items.map(i => i.dataset.status)")
                    if len(states) == 2 and all(s in ("completed", "failed") for s in states):
                        break
                    assert time.monotonic() < deadline, states
                    await asyncio.sleep(0.5)
                listed = await page.eval_on_selector_all("#taskList li", "items => items.map(i => i.textContent)")
                done = next(text for text in listed if "lt_video" in text)
                failed = next(text for text in listed if "lt_faceless" in text)
                assert " lite lt_video COMPLETED " in done and "100%" in done and "Invalid Date" not in done, done
                assert "error" not in done and "undefined" not in done, done
                assert " FAILED " in failed and "error: " in failed and "undefined" not in failed, failed

                await page.evaluate("fetchConfig()")
                rows = await page.eval_on_selector_all("#configTable tr", "rows => rows.map(r => r.textContent)")
                assert {"model=lite", "avatar_id=testface", "transport=webrtc", "REF_FILE=",
                        f"listenport={running.context.args.listenport}"} <= set(rows), rows
                await page.evaluate("fetchSessions()")
                assert await page.text_content("#sessionCount") == "1"
                assert await page.text_content("#sessions li") == f"SID: {client.sessionid} webrtc testface lite silent"

                for kind in ("start_record", "end_record"):  # LiveTalking: HTTP 200, code -1, nothing recorded
                    answer = await page.evaluate(f"record('{kind}')")
                    assert answer["ok"] is True and answer["body"]["code"] == -1, answer
                    assert answer["body"]["msg"].startswith("session not found"), answer
                assert not (tmp_path / "record").exists()
                await page.evaluate("fetchSessions()")
                assert "recording" not in await page.text_content("#sessions li")
            finally:
                await browser.close()
        status, body = await post(http, f"{running.url}/record", {"type": "start_record", "sessionid": client.sessionid})
        assert status == 200 and body["code"] == 0, body  # a named session still records
        async with http.get(f"{running.url}/api/admin/sessions") as response:
            assert (await response.json())["data"]["sessions"][0]["recording"] is True
        await asyncio.sleep(0.5)  # a few frames recorded
        status, body = await post(http, f"{running.url}/record", {"type": "end_record", "sessionid": client.sessionid})
        assert status == 200 and body["code"] == 0, body
    finally:
        await client.close()
        await running.runner.cleanup()


# Written for this test, not copied: the calls of LiveTalking's old push pages (rtcpushapi.html sends
# {text, type} with no sessionid; rtmpapi.html sends sessionid '0') and of its ASR page (asr/main.js
# with wsconnecter.js: FunASR's protocol on /api/asr, a final result forwarded to /human as chat
# without a sessionid when its mode is "2pass-offline" or "offline", /is_speaking polled with sessionid 0).
THEIR_PUSH_AND_ASR_PAGE = """<!doctype html><html><body><textarea id="varArea"></textarea>
<script>
const json = {'Content-Type': 'application/json'};
async function oldPushEcho(text) {
  return (await fetch('/human', {body: JSON.stringify({text: text, type: 'echo'}), headers: json, method: 'POST'})).json();
}
async function rtmpEcho(text) {
  return (await fetch('/human', {body: JSON.stringify({text: text, type: 'echo', sessionid: '0'}), headers: json,
                                 method: 'POST'})).json();
}
async function is_speaking() {
  const response = await fetch('/is_speaking', {body: JSON.stringify({sessionid: 0}), headers: json, method: 'POST'});
  return (await response.json()).data;
}
const results = [], forwarded = [];
let socket = null, rec_text = '', offline_text = '';
function getJsonMessage(event) {
  const message = JSON.parse(event.data);
  results.push(message);
  const rectxt = '' + message.text;
  if (message.mode == '2pass-offline' || message.mode == 'offline') {
    offline_text = offline_text + rectxt.replace(/ +/g, '') + '\\n';
    rec_text = offline_text;
    fetch('/human', {body: JSON.stringify({text: rectxt.replace(/ +/g, ''), type: 'chat'}), headers: json,
                     method: 'POST'}).then((r) => r.json()).then((body) => forwarded.push(body));
  } else {
    rec_text = rec_text + rectxt;
  }
  document.getElementById('varArea').value = rec_text;
}
function connectAsr(mode) {
  return new Promise((opened, failed) => {
    socket = new WebSocket(`ws://${location.host}/api/asr`);
    socket.onmessage = getJsonMessage;
    socket.onerror = failed;
    socket.onopen = () => {
      socket.send(JSON.stringify({chunk_size: [5, 10, 5], wav_name: 'h5', is_speaking: true, chunk_interval: 10,
                                  itn: false, mode: mode}));
      opened();
    };
  });
}
function speakInto(mode, base64) {  // the recorder's 960-sample pieces, then stop()
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  let samples = new Int16Array(bytes.buffer);
  while (samples.length >= 960) {
    socket.send(samples.slice(0, 960));
    samples = samples.slice(960);
  }
  if (samples.length > 0) socket.send(samples);
  socket.send(JSON.stringify({chunk_size: [5, 10, 5], wav_name: 'h5', is_speaking: false, chunk_interval: 10,
                              mode: mode}));
}
</script></body></html>"""


# A page the test fulfils has no address space Chromium can know (served by this server it is loopback),
# so its WebSocket to 127.0.0.1 would trip Local Network Access checks: those are off for routed pages.
ROUTED_PAGE_ARGS = [arg + ",LocalNetworkAccessChecks" if arg.startswith("--disable-features=") else arg
                    for arg in CHROMIUM_ARGS]


async def wait_until(page, expression: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_their_push_pages_and_2pass_asr_page_in_chromium(data_dir, llm_server, http):
    """--numeric-session-ids with a pushed session 0: no sessionid means it; a 2pass final reaches /human."""
    import base64

    from playwright.async_api import async_playwright

    from tests.conftest import free_port
    from tests.support.llm_server import Script
    from tests.support.speech_sender import speak

    running = await start_server(server_args(
        data_dir, "--numeric-session-ids", "--transport", "rtmp", "--push-session-id", "0",
        "--push-url", f"rtmp://127.0.0.1:{free_port()}/live/avatar",  # nobody listens: the session runs anyway
        "--llm-base-url", llm_server.base_url, "--llm-model", "test-model"))
    pushed = running.context.sessions.get("0")
    assert pushed is not None and pushed.broadcast
    status, body = await post(http, f"{running.url}/human", {"text": "x", "type": "echo", "sessionid": None})
    assert status == 400, body  # null is parseInt's NaN: a page that failed to name its session, not the pushed one
    pcm = (np.clip(speak("I would like to visit the museum."), -1, 1) * 32767).astype("<i2").tobytes()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ROUTED_PAGE_ARGS)
            try:
                page = await browser.new_page()
                await serve_on(page, running.url, "their-push.html", THEIR_PUSH_AND_ASR_PAGE)
                for call in ("oldPushEcho", "rtmpEcho"):
                    answer = await page.evaluate(f"{call}('Hello from the old push page.')")
                    assert answer["code"] == 0, (call, answer)
                    await wait_until(page, "is_speaking()", 15, f"{call}: the pushed session never spoke")
                    assert pushed.speaking
                    await post(http, f"{running.url}/interrupt_talk", {"sessionid": "0"})
                    await wait_until(page, "is_speaking().then((s) => !s)", 5, "the interrupt was not heard")

                llm_server.queue(Script(deltas=["The museum opens at nine."]))
                await page.evaluate("connectAsr('2pass')")
                await page.evaluate(f"speakInto('2pass', '{base64.b64encode(pcm).decode()}')")
                await wait_until(page, "forwarded.length > 0", 60, "no result was forwarded to /human")
                results = await page.evaluate("results")
                assert [r["mode"] for r in results] == ["2pass-offline"] and results[0]["is_final"] is True, results
                assert await page.evaluate("forwarded") == [{"code": 0, "msg": "ok", "data": {"chat": True}}]
                heard = llm_server.exchanges[-1].body["messages"][-1]["content"]
                assert "museum" in heard.lower() and " " not in heard, heard  # their page strips spaces
                await wait_until(page, "is_speaking()", 15, "the pushed session never spoke the reply")
            finally:
                await browser.close()
    finally:
        await running.runner.cleanup()
