"""Tools for attacking a server process the way a hostile client would (loopback only).

`Attacker` makes requests and tallies every status it sees, so a suite can
assert that nothing answered 5xx; raw-socket helpers send bodies slowly or in
pieces; the hostile files are built here, in the shapes of the reproductions.
"""

from __future__ import annotations

import asyncio
import fractions
import io
import json
import struct
import time
import zlib
from collections import Counter
from typing import Any

import aiohttp
import av
import numpy as np
from aiohttp import web
from aiortc.mediastreams import MediaStreamTrack

from tests.support.tts_servers import PCM_RATE, LocalServer, pcm_s16, sine


class Attacker:
    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http = http
        self.url = url
        self.statuses: Counter[int] = Counter()

    async def call(self, method: str, path: str, **kwargs) -> tuple[int, Any, dict]:
        async with self.http.request(method, f"{self.url}{path}", **kwargs) as response:
            raw = await response.read()
            self.statuses[response.status] += 1
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            return response.status, body, dict(response.headers)

    async def post(self, path: str, body: dict) -> tuple[int, Any]:
        status, answer, _ = await self.call("POST", path, json=body)
        return status, answer

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


async def raw_request(port: int, head: bytes, body_parts: list[bytes], pause_s: float, read_timeout_s: float) -> bytes:
    """Send a request's head and body parts with pauses between them; the raw response (or b'')."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        for part in body_parts:
            await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), read_timeout_s)
    finally:
        writer.close()


def json_head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def silent_flac(seconds: float, rate: int = 16000) -> bytes:
    """A tiny file that decodes to a lot of audio: silence compresses to almost nothing."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        block = np.zeros((1, rate), np.int16)
        for second in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = second * rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    data = samples.astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data))
    return header + data


def wav_declaring(rate: int, samples: int) -> bytes:
    """A WAV whose header claims `rate` Hz: at 1 Hz, 600 samples (1,244 bytes) "last" ten minutes."""
    return wav_bytes(np.zeros(samples, np.int16), rate)


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    return wav_bytes(np.round(sine(seconds, rate) * 32767), rate)


def multipart_upload(sessionid: str, data: bytes, filename: str = "a.wav") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("sessionid", sessionid)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return form


def bomb_png(side: int) -> bytes:
    """A PNG declaring side x side pixels (1-bit grey, all black): ~50 kB that decode to side*side*3 bytes in BGR."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + the packed bits of one row
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def black_clip(seconds: float, width: int = 3840, height: int = 2160, fps: int = 25) -> bytes:
    """An H.264 clip of black frames: 3 s of 4K is ~28 kB that decode to ~2.3 GB of BGR frames."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for index in range(int(seconds * fps)):
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def avatar_form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return form


def multipart_head(path: str, boundary: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n").encode()


class NoiseCamera(MediaStreamTrack):
    """A 640x480 camera at 25 fps filming noise (costly to encode and to decode)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._rng = np.random.default_rng(7)

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(0.04)
        image = self._rng.integers(0, 255, (480, 640, 3), np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90000)
        self._pts += 3600
        return frame


class ScriptedSpeechServer(LocalServer):
    """An OpenAI-compatible /v1/audio/speech on 127.0.0.1 whose behaviour the test switches:
    "ok" streams a second of PCM, "hang" accepts and never answers, "drip" sends a byte a second."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.open_requests = 0
        self.hung_up = 0
        self.requests = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/speech", self._speech)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        self.open_requests += 1
        try:
            if self.mode == "hang":
                await asyncio.sleep(3600)
            response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
            await response.prepare(request)
            if self.mode == "drip":
                for _ in range(3600):
                    await response.write(b"\0")
                    await asyncio.sleep(1.0)
            await response.write(pcm_s16(sine(1.0, PCM_RATE)))
            await response.write_eof()
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.hung_up += 1
            raise
        finally:
            self.open_requests -= 1


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def flood_asr_socket(client: aiohttp.ClientSession, url: str, pcm: bytes, stop: asyncio.Event, replies: list,
                           max_utterances: int = 30, reply_timeout_s: float = 120.0) -> None:
    """One /api/asr socket sending the same utterance back to back (bounded), each reply kept in `replies`."""
    async with client.ws_connect(f"{url}/api/asr") as socket:
        for _ in range(max_utterances):
            if stop.is_set():
                return
            await socket.send_json({"is_speaking": True, "mode": "offline", "wav_name": "flood"})
            for start in range(0, len(pcm), 64 * 1024):
                await socket.send_bytes(pcm[start:start + 64 * 1024])
            await socket.send_json({"is_speaking": False})
            replies.append(await socket.receive_json(timeout=reply_timeout_s))


def transcribed(replies: list[dict]) -> int:
    """Flood utterances the recogniser worked on (a socket that waited too long is told so, with no text)."""
    return sum(1 for reply in replies if reply.get("text") and not reply.get("error"))
