"""GET /sse: LiveTalking's `data: {"status": "start"|"end", ...}` playback events, with /events' limits."""

from __future__ import annotations

import asyncio
import json

from session import MAX_SUBSCRIBERS
from tests.conftest import connected_client
from tests.test_actions import post


async def test_sse_sends_livetalking_start_and_end(server, http):
    client = await connected_client(server.url, http)
    received: list[dict] = []

    async def listen() -> None:
        async with http.get(f"{server.url}/sse", params={"sessionid": client.sessionid}) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
            async for line in response.content:
                if line.startswith(b"data: "):
                    received.append(json.loads(line[6:]))
                    if received[-1]["status"] == "end":
                        return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    status, _ = await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": "Hi there.", "type": "echo"})
    assert status == 200
    await asyncio.wait_for(listener, 15)
    assert [event["status"] for event in received] == ["start", "end"]
    assert received[0]["text"] == "Hi there." and received[0]["utterance"] == received[1]["utterance"]
    assert received[1]["interrupted"] is False

    # An interrupted utterance ends with interrupted: true.
    received.clear()
    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": "A long sentence. " * 10, "type": "echo"})
    for _ in range(200):
        if received:
            break
        await asyncio.sleep(0.05)
    await post(http, f"{server.url}/interrupt_talk", {"sessionid": client.sessionid})
    await asyncio.wait_for(listener, 10)
    assert received[-1] == {**received[-1], "status": "end", "interrupted": True}

    async with http.get(f"{server.url}/sse", params={"sessionid": "nope"}) as response:
        assert response.status == 404
    async with http.get(f"{server.url}/sse") as response:
        assert response.status == 400
    await client.close()


async def test_sse_and_events_share_the_subscriber_cap(server, http):
    client = await connected_client(server.url, http)
    streams = []
    try:
        for i in range(MAX_SUBSCRIBERS):
            path = "/sse" if i % 2 else "/events"
            response = await http.get(f"{server.url}{path}", params={"sessionid": client.sessionid})
            assert response.status == 200
            await response.content.readline()
            streams.append(response)
        for path in ("/sse", "/events"):
            async with http.get(f"{server.url}{path}", params={"sessionid": client.sessionid}) as extra:
                assert extra.status == 429 and (await extra.json())["code"] == -1
    finally:
        for response in streams:
            response.close()
    await asyncio.sleep(1.2)  # an idle stream notices its listener left within sse.POLL_S
    async with http.get(f"{server.url}/sse", params={"sessionid": client.sessionid}) as again:
        assert again.status == 200
    await client.close()


async def test_new_json_endpoints_go_through_the_shared_body_checks(server, http):
    for path in ("/set_audiotype", "/record", "/set_avatar"):
        async with http.post(f"{server.url}{path}", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "JSON" in (await r.json())["msg"], path
        async with http.post(f"{server.url}{path}", data=b'{"sessionid": "x"}', headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415, path
        async with http.post(f"{server.url}{path}", json={"sessionid": "nobody"}) as r:
            assert r.status == 404 and (await r.json())["code"] == -1, path
