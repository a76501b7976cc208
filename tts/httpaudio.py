"""Streaming audio out of a local TTS service's HTTP response, as it arrives.

The voice-cloning services LiveTalking users run answer with raw s16le PCM,
or a WAV header followed by raw PCM. `PCMDecoder` turns body pieces into
16 kHz float32 audio (a sample split across two pieces is carried over);
`stream_pcm` runs one request on the process's network loop, ends it (closing
the connection) as soon as the utterance is cancelled or the service stalls,
and turns HTTP failures into TTSErrors that say what to check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

import httpx2
import numpy as np

from tts.base import Resampler, TTSError
from tts.netloop import NetworkLoop, StreamStalled

S16_SCALE = 32768.0
PIECE_BYTES = 4096
RIFF_HEADER_MIN = 12
MAX_HEADER_BYTES = 64 * 1024
MAX_ERROR_CHARS = 300


class PCMDecoder:
    """s16le mono pieces -> 16 kHz float32, optionally after a WAV header that sets the rate."""

    def __init__(self, rate: int, wav_header: bool = False):
        self.rate = rate
        self._pending = b""
        self._header = wav_header
        self._resampler: Resampler | None = None if wav_header else Resampler(rate)

    def push(self, piece: bytes) -> np.ndarray:
        data = self._pending + piece
        if self._header:
            data = self._skip_header(data)
            if data is None:
                return np.zeros(0, np.float32)
        usable = len(data) - len(data) % 2
        self._pending = data[usable:]
        if not usable:
            return np.zeros(0, np.float32)
        samples = np.frombuffer(data[:usable], "<i2").astype(np.float32) / S16_SCALE
        return self._resampler.push(samples)

    def flush(self) -> np.ndarray:
        return self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)

    def _skip_header(self, data: bytes) -> bytes | None:
        """Read RIFF chunks up to `data`; None while the header is incomplete."""
        if len(data) < RIFF_HEADER_MIN:
            self._pending = data
            return None
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise TTSError("the TTS service did not send WAV audio: check --tts and --tts-server")
        offset = RIFF_HEADER_MIN
        while True:
            if len(data) < offset + 8:
                break
            chunk_id, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
            if chunk_id == b"data":
                self._header = False
                self._resampler = self._resampler or Resampler(self.rate)
                return data[offset + 8:]
            if chunk_id == b"fmt ":
                if len(data) < offset + 8 + 16:
                    break
                channels, rate, _, _, bits = struct.unpack("<HIIHH", data[offset + 10:offset + 24])
                if channels != 1 or bits != 16:
                    raise TTSError(f"the TTS service sent {channels}-channel {bits}-bit audio; 16-bit mono expected")
                self.rate = rate
            offset += 8 + size + size % 2
        if len(data) > MAX_HEADER_BYTES:
            raise TTSError("the TTS service's WAV header never ended")
        self._pending = data
        return None


@dataclass(frozen=True)
class ServiceRequest:
    """One HTTP request to a TTS service (built in the TTS thread, sent on the network loop)."""

    method: str
    url: str
    options: dict = field(default_factory=dict)  # json= / data= / files= for httpx2


def error_text(body: bytes) -> str:
    return body.decode("utf-8", "replace")[:MAX_ERROR_CHARS]


async def response_pieces(client: httpx2.AsyncClient, request: ServiceRequest, label: str) -> AsyncIterator[bytes]:
    """The body of one streamed response, piece by piece (runs on the network loop)."""
    async with client.stream(request.method, request.url, **request.options) as response:
        if response.status_code != 200:
            detail = error_text(await response.aread()) or response.reason_phrase
            raise TTSError(f"{label} answered {response.status_code} at {request.url}: {detail}")
        async for piece in response.aiter_bytes(PIECE_BYTES):
            yield piece


def stream_pcm(label: str, network: NetworkLoop, client: httpx2.AsyncClient, request: ServiceRequest,
               decoder: PCMDecoder, cancelled: Callable[[], bool], timeout_s: float) -> Iterator[np.ndarray]:
    """Yield 16 kHz audio from one streamed request until the body ends or `cancelled()`.

    The transfer runs on the shared network loop: an interrupt ends it at once, and a
    service that does not start (or stops) sending within `timeout_s` is an error.
    """
    try:
        for piece in network.iterate(response_pieces(client, request, label), cancelled, timeout_s, timeout_s):
            audio = decoder.push(piece)
            if audio.size:
                yield audio
    except StreamStalled as exc:
        raise TTSError(f"{label} at {request.url} {exc}: check the service or use --tts espeak") from exc
    except httpx2.TimeoutException as exc:
        raise TTSError(f"{label} at {request.url} timed out ({type(exc).__name__}): check the service") from exc
    except httpx2.TransportError as exc:
        raise TTSError(f"could not reach {label} at {request.url} ({exc}): start it or fix --tts-server") from exc
    if not cancelled():
        tail = decoder.flush()
        if tail.size:
            yield tail
