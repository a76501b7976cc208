"""Publish one session to a WHIP endpoint (RFC 9725) with aiortc: SFUs and media servers
(SRS, go2rtc, Janus+simple-whip-server, Cloudflare Stream, LiveKit ingress) fan it out.

The client POSTs its SDP offer (`application/sdp`) and gets `201 Created` with the
answer and the session's resource URL in `Location`. aiortc gathers every ICE
candidate before the offer and has no trickle ICE or ICE restart, so no PATCH is
ever needed: when the connection fails the client DELETEs the resource and
publishes again with a new peer connection, backing off between attempts. Stopping
DELETEs the resource so the server frees it at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from httpapi import redact_url

if TYPE_CHECKING:
    from session import Session

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
HTTP_TIMEOUT_S = 10.0
SDP_TYPE = "application/sdp"
ENDED_STATES = ("failed", "closed")


class WhipError(Exception):
    """The endpoint refused the offer; the message says what it answered."""


class WhipPublisher:
    """Keeps `session`'s tracks published at `url` until stopped."""

    def __init__(self, url: str, session: "Session", ice_servers: list[RTCIceServer], token: str | None = None,
                 backoff: tuple[float, ...] = BACKOFF_S):
        self.url = url
        self.session = session
        self.ice_servers = ice_servers
        self.token = token
        self.backoff = backoff
        self.resource: str | None = None  # the Location of the live publication
        self.publications = 0
        self.last_error = ""
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        self._task = asyncio.create_task(self._run(), name=f"whip-{self.session.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._delete()
        if self._http is not None:
            await self._http.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _run(self) -> None:
        attempt = 0
        pc = self.session.pc  # the session's own connection, tracks already added
        while True:
            try:
                ended = await self._publish(pc)
                attempt = 0
                await ended.wait()
                logger.warning("whip: connection to %s %s: publishing again", redact_url(self.url),
                               pc.connectionState)
            except (WhipError, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                self.last_error = str(exc)
                delay = self.backoff[min(attempt, len(self.backoff) - 1)]
                attempt += 1
                logger.warning("whip: publishing to %s failed (%s): retrying in %.0f s", redact_url(self.url),
                               redact_url(str(exc)), delay)
                await asyncio.sleep(delay)
            await self._delete()
            await pc.close()
            pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
            self.session.player.renew_tracks()
            pc.addTrack(self.session.player.audio)
            pc.addTrack(self.session.player.video)
            self.session.pc = pc  # closing the session closes the live connection

    async def _publish(self, pc: RTCPeerConnection) -> asyncio.Event:
        """POST the offer, apply the answer; returns an event set when the connection ends."""
        assert self._http is not None
        for transceiver in pc.getTransceivers():
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createOffer())
        async with self._http.post(self.url, data=pc.localDescription.sdp.encode(),
                                   headers=self._headers(SDP_TYPE)) as response:
            body = await response.text()
            if response.status != 201:
                raise WhipError(f"HTTP {response.status} {body[:200]!r} (WHIP wants 201 Created with an SDP answer)")
            location = response.headers.get("Location")
            if not location:
                raise WhipError("201 without a Location header: not a WHIP endpoint")
            self.resource = urljoin(str(response.url), location)
        ended = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ENDED_STATES:
                ended.set()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        self.publications += 1
        logger.info("whip: publishing session %s at %s", self.session.tag, redact_url(self.resource))
        return ended

    async def _delete(self) -> None:
        """End the publication on the server (best effort: it may be gone already)."""
        resource, self.resource = self.resource, None
        if resource is None or self._http is None:
            return
        try:
            async with self._http.delete(resource, headers=self._headers()) as response:
                logger.info("whip: DELETE %s -> %d", resource, response.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.info("whip: DELETE %s failed: %s", resource, exc)
