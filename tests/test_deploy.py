"""deploy/: nginx (Debian) in front of two real worker processes, real aiortc peers through it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from deploy.nginx_conf import main as nginx_conf
from tests.conftest import free_port
from tests.support.nginx_process import NginxProcess
from tests.support.rtc_client import ReceiverClient
from tests.support.worker_process import WorkerProcess
from tests.support.speech_helpers import voiced_frames, wait_silent, wait_voiced

SESSIONS_PER_WORKER = 2


def render_config(prefix, port: int, workers: dict[str, WorkerProcess], capsys) -> str:
    args = ["--listen", f"127.0.0.1:{port}", "--standalone", str(prefix)]
    for wid, worker in workers.items():
        args += ["--worker", f"{wid}=127.0.0.1:{worker.port}"]
    assert nginx_conf(args) == 0
    return capsys.readouterr().out


@pytest.fixture
async def cluster(data_dir, tmp_path, http, capsys):
    workers = {wid: WorkerProcess(data_dir, tmp_path / f"{wid}.log", "--worker-id", wid,
                                  "--max_session", str(SESSIONS_PER_WORKER), "--max-pending-per-client", "0")
               for wid in ("w1", "w2")}
    nginx = None
    try:
        await asyncio.gather(*(w.start(http) for w in workers.values()))
        port = free_port()
        nginx = NginxProcess(tmp_path / "nginx", render_config(tmp_path / "nginx", port, workers, capsys)).start(port)
        yield f"http://127.0.0.1:{port}", workers, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        for worker in workers.values():
            worker.kill()


async def offer(url: str, http) -> tuple[int, ReceiverClient, dict]:
    client = ReceiverClient(url, keep_video=False)
    client.pc.addTransceiver("video", direction="recvonly")
    client.pc.addTransceiver("audio", direction="recvonly")

    @client.pc.on("track")
    def on_track(track) -> None:
        client._tasks.append(asyncio.ensure_future(client._consume(track)))

    await client.pc.setLocalDescription(await client.pc.createOffer())
    async with http.post(f"{url}/offer", json={"sdp": client.pc.localDescription.sdp, "type": "offer"}) as r:
        body = await r.json()
        status = r.status
    if status == 200:
        client.sessionid = body["sessionid"]
        from aiortc import RTCSessionDescription
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return status, client, body


async def events_arrive_unbuffered(url: str, http, client: ReceiverClient) -> None:
    """/events through nginx: the `start` event comes while the speech plays, not when the stream ends."""
    async with http.get(f"{url}/events", params={"sessionid": client.sessionid}) as stream:
        assert stream.status == 200
        await stream.content.readline()  # ": connected"
        async with http.post(f"{url}/human", params={"sessionid": client.sessionid},
                             json={"sessionid": client.sessionid, "text": "Hi."}) as r:
            assert r.status == 200
        while True:
            line = await asyncio.wait_for(stream.content.readline(), 10)
            if line.startswith(b"data:") and b'"start"' in line:
                return


async def test_offers_fill_both_workers_each_session_speaks_on_its_own_stream_and_events_flow(cluster, http):
    url, workers, nginx = cluster
    clients: list[ReceiverClient] = []
    try:
        for _ in range(2 * SESSIONS_PER_WORKER):
            status, client, body = await offer(url, http)
            assert status == 200, body
            clients.append(client)
        status, extra, body = await offer(url, http)  # both full: nginx tried each, the last 503 comes back
        await extra.close()
        assert status == 503 and "limit" in body["msg"], body
        deadline = time.monotonic() + 2.0  # nginx writes the access-log line once the response is done
        while True:
            offers = [line for line in nginx.access_log() if line.startswith("POST /offer")]
            if len(offers) > 2 * SESSIONS_PER_WORKER or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert offers[-1].endswith("got=503, 503"), offers  # each full worker answered 503, nginx tried the next
        assert Counter(c.sessionid.split("-")[0] for c in clients) == {"w1": 2, "w2": 2}
        await asyncio.gather(*(c.wait_for(video_frames=5, audio_frames=10, timeout=30) for c in clients))

        for index, speaker in enumerate(clients):
            marks = [len(c.audio) for c in clients]
            query = f"?sessionid={speaker.sessionid}" if index % 2 == 0 else ""  # odd ones: body only (404 hops)
            async with http.post(f"{url}/human{query}", json={"sessionid": speaker.sessionid, "text": "Hello there."}) as r:
                assert r.status == 200, await r.json()
            await wait_voiced(speaker, marks[index], timeout=15)
            await wait_silent(speaker, 0.4)  # the whole utterance is out before the next one starts
            for other, mark in zip(clients, marks):
                if other is not speaker:
                    assert not voiced_frames(other.audio[mark:]), f"session {index}'s speech leaked to another stream"
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 404  # scraped per worker, not through the proxy
        await events_arrive_unbuffered(url, http, clients[0])
    finally:
        await asyncio.gather(*(c.close() for c in clients))
