"""The user's camera: only the latest frame is kept, and only turned into JPEG on demand."""

from __future__ import annotations

import base64

import av
import cv2

MAX_SIDE = 512  # a vision LLM needs no more; keeps each chat request small
JPEG_QUALITY = 80


class LatestFrame:
    """The camera's sink (fed by an UplinkReader): keeps only the last video frame."""

    def __init__(self) -> None:
        self.frame: av.VideoFrame | None = None

    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if isinstance(frame, av.VideoFrame):
            self.frame = frame


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
