"""The user's camera: only the latest frame is kept, and only turned into JPEG on demand."""

from __future__ import annotations

import asyncio
import base64

import av
import cv2
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

MAX_SIDE = 512  # a vision LLM needs no more; keeps each chat request small
JPEG_QUALITY = 80


class LatestFrame:
    """Consumes a remote video track (aiortc queues every frame until read) and keeps the last one."""

    def __init__(self, track: MediaStreamTrack, name: str):
        self.track = track
        self.frame: av.VideoFrame | None = None
        self.frames = 0
        self._task = asyncio.create_task(self._run(), name=name)

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                return
            self.frames += 1
            if isinstance(frame, av.VideoFrame):
                self.frame = frame

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def jpeg_data_url(frame: av.VideoFrame, max_side: int = MAX_SIDE) -> str:
    """A downscaled JPEG of the frame as a data: URL, the form OpenAI image parts accept (CPU work)."""
    image = frame.to_ndarray(format="bgr24")
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1.0:
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("camera frame could not be encoded as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
