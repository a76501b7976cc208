"""HTTP input validation of /offer and friends: clear 4xx, and the server keeps serving."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from tests.support.rtc_client import ReceiverClient


async def offer_sdp() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_bad_offers_get_clear_errors(server, http):
    pc, sdp = await offer_sdp()
    cases = [
        (b"{not json", 400, "JSON"),
        (b"[1, 2]", 400, "object"),
        (b'{"type": "offer"}', 400, "sdp"),
        (b'{"sdp": "v=0", "type": "answer"}', 400, "offer"),
        (b'{"sdp": "this is not sdp", "type": "offer"}', 400, "SDP"),
    ]
    for raw, status, word in cases:
        async with http.post(f"{server.url}/offer", data=raw, headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == status, (raw, r.status, body)
            assert body["code"] == -1 and word.lower() in body["msg"].lower(), body
    for avatar, status in (("nobody", 404), ("../../etc", 400), ("a/b", 400), ("..", 400), ("", 200)):
        async with http.post(f"{server.url}/offer", json={"sdp": sdp, "type": "offer", "avatar": avatar}) as r:
            body = await r.json()
            assert r.status == status, (avatar, body)
            if status != 200:
                assert body["code"] == -1 and body["msg"]
    await pc.close()
    async with http.post(f"{server.url}/offer", data=b"x" * 400_000, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
    # Nothing half-built is left behind, and the server still serves.
    await asyncio.sleep(0.2)
    assert len(server.context.sessions) == 1  # the one valid offer ("" = default avatar)
    await server.context.sessions.close_all("test")
    client = ReceiverClient(server.url)
    await client.connect(http)
    await client.wait_for(video_frames=3)
    await client.close()


async def test_session_limit_holds_under_concurrent_offers(server, http):
    limit = server.context.sessions.max_sessions
    peers = [await offer_sdp() for _ in range(limit + 2)]

    async def post(sdp: str) -> tuple[int, dict]:
        async with http.post(f"{server.url}/offer", json={"sdp": sdp, "type": "offer"}) as r:
            return r.status, await r.json()

    results = await asyncio.gather(*(post(sdp) for _, sdp in peers))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * limit + [503] * 2, statuses
    refused = [body for status, body in results if status == 503]
    assert all(body["code"] == -1 and "limit" in body["msg"] for body in refused)
    assert len(server.context.sessions) == limit
    for pc, _ in peers:
        await pc.close()
    await server.context.sessions.close_all("test")


async def test_config_tells_the_page_how_to_connect(server, http):
    async with http.get(f"{server.url}/config") as r:
        body = await r.json()
    assert body["code"] == 0 and body["iceServers"] == [] and body["model"] == "lite"
    assert body["avatar"] == "testface" and "testface" in body["avatars"]


def test_ice_server_flags_parse_stun_and_turn_with_credentials():
    import argparse

    import pytest

    from server.offer import parse_ice_server

    stun = parse_ice_server("stun:stun.example.org:3478")
    assert stun.urls == "stun:stun.example.org:3478" and stun.username is None
    turn = parse_ice_server("turn:alice:s3cret@turn.example.org:3478?transport=udp")
    assert (turn.urls, turn.username, turn.credential) == ("turn:turn.example.org:3478?transport=udp", "alice", "s3cret")
    for bad in ("http://x", "turn:turn.example.org:3478", "stun"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_ice_server(bad)
