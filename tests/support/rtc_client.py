"""An in-process aiortc receiver that talks to the server over loopback, as a browser would."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


@dataclass
class Received:
    """One decoded frame: its pts, the wall time it arrived and its content."""

    pts: int
    arrival: float
    data: np.ndarray


@dataclass
class ReceiverClient:
    base_url: str
    avatar: str | None = None
    keep_video: bool = True
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    video: list[Received] = field(default_factory=list)
    audio: list[Received] = field(default_factory=list)
    sessionid: str | None = None
    offer_fields: dict = field(default_factory=dict)  # more /offer fields (e.g. custom_config)
    channel_messages: list[str] = field(default_factory=list)
    channel: RTCDataChannel | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def connect(self, http: aiohttp.ClientSession, data_channel: bool = False, *,
                      uplink: MediaStreamTrack | None = None, camera: MediaStreamTrack | None = None,
                      listen: str | None = None, audio_codec: str | None = None) -> dict:
        """Offer to receive the avatar, and optionally send a microphone (`uplink`) and a `camera`."""
        if camera is not None:
            self.pc.addTransceiver(camera, direction="sendrecv")
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        if uplink is not None:
            transceiver = self.pc.addTransceiver(uplink, direction="sendrecv")
            if audio_codec:
                codecs = RTCRtpSender.getCapabilities("audio").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() == f"audio/{audio_codec.lower()}"])
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        if data_channel:
            self.channel = self.pc.createDataChannel("events")
            self.channel.on("message", self.channel_messages.append)

        @self.pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.avatar:
            body["avatar"] = self.avatar
        if listen:
            body["listen"] = listen
        body.update(self.offer_fields)
        async with http.post(f"{self.base_url}/offer", json=body) as response:
            answer = await response.json()
            assert response.status == 200, answer
        self.sessionid = answer["sessionid"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def _consume(self, track) -> None:
        sink = self.video if track.kind == "video" else self.audio
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            if track.kind == "video":
                data = frame.to_ndarray(format="bgr24") if self.keep_video else np.empty(0)
            else:
                data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].copy()
            sink.append(Received(frame.pts, arrival, data))

    async def wait_for(self, video_frames: int = 0, audio_frames: int = 0, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.video) < video_frames or len(self.audio) < audio_frames:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"got {len(self.video)}/{video_frames} video and {len(self.audio)}/{audio_frames} audio frames"
                )
            await asyncio.sleep(0.05)

    def stop_reports(self) -> None:
        """Stop sending RTCP receiver reports (a peer gone silent that still answers ICE checks)."""
        async def drop(_packet) -> None:
            return None

        for transceiver in self.pc.getTransceivers():
            transceiver.receiver._send_rtcp = drop

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
