"""edge-tts: Microsoft Edge's online voices, streamed.

Audio starts flowing with the first MP3 bytes: each websocket message is parsed
and decoded as it arrives instead of after the whole utterance. edge-tts is
asyncio; `stream` runs in a session's TTS thread, so it drives the library on a
private event loop one step at a time, checking `cancelled()` while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from typing import Callable, Iterator

import aiohttp
import av
import edge_tts
import numpy as np
from edge_tts.exceptions import EdgeTTSException, NoAudioReceived

from httpapi import redact_url
from tts.base import Resampler, TTSBackend, TTSError

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en-US-AriaNeural"
POLL_S = 0.05  # how often a wait for the service checks for an interrupt
CLOSE_GRACE_S = 0.5  # time for a websocket close handshake after an interrupt
PROBE_TEXT = "Hello."
S16_SCALE = 32768.0
FALLBACK_HINT = "check the network or use --tts espeak"
# The shape of every name in edge-tts's voice catalogue ("en-US-AriaNeural", "zh-CN-XiaoxiaoNeural",
# "en-US-AndrewMultilingualNeural"). The catalogue itself is online; a name is checked against its shape
# offline, so that nothing else is ever sent to the service.
VOICE_NAME = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8}){1,2}-[A-Z][A-Za-z]{1,40}Neural")


def check_voice(voice: str) -> str:
    if not isinstance(voice, str) or not VOICE_NAME.fullmatch(voice):
        raise TTSError(f"bad edge-tts voice {str(voice)[:60]!r}: use a catalogue name such as en-US-AriaNeural "
                       "or zh-CN-XiaoxiaoNeural (edge-tts --list-voices)")
    return voice


class Mp3Decoder:
    """MP3 bytes in any pieces -> 16 kHz mono float32, as soon as each frame is complete."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("mp3", "r")
        self._resampler: Resampler | None = None
        self.frames = 0

    def push(self, data: bytes) -> np.ndarray:
        return self._decode(self._codec.parse(data))

    def flush(self) -> np.ndarray:
        audio = self._decode(self._codec.parse(None))
        pieces = [audio]
        for frame in self._codec.decode(None):
            pieces.append(self._resample(frame))
        if self._resampler is not None:
            pieces.append(self._resampler.flush())
        return np.concatenate(pieces)

    def _decode(self, packets: list[av.Packet]) -> np.ndarray:
        pieces = [np.zeros(0, np.float32)]
        for packet in packets:
            try:
                frames = self._codec.decode(packet)
            except av.error.InvalidDataError:  # a tag or a damaged frame: skip it, keep the stream
                logger.debug("edge-tts: skipped an undecodable MP3 packet")
                continue
            pieces.extend(self._resample(frame) for frame in frames)
        return np.concatenate(pieces)

    def _resample(self, frame: av.AudioFrame) -> np.ndarray:
        self.frames += 1
        samples = frame.to_ndarray()
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / S16_SCALE
        if frame.format.is_planar:
            samples = samples.reshape(len(frame.layout.channels), -1).mean(axis=0)
        else:
            samples = samples.reshape(-1, len(frame.layout.channels)).mean(axis=1)
        if self._resampler is None:
            self._resampler = Resampler(frame.sample_rate)
        return self._resampler.push(samples.astype(np.float32, copy=False))


class EdgeTTS(TTSBackend):
    """Online neural voices (needs the internet); `voice` as listed by `edge-tts --list-voices`."""

    name = "edge"

    def __init__(
        self,
        voice: str = DEFAULT_VOICE,
        proxy: str | None = None,
        rate: str = "+0%",
        connect_timeout: int = 10,
        receive_timeout: int = 30,
    ):
        self.voice = voice
        self.proxy = proxy
        self.rate = rate
        self.connect_timeout = connect_timeout
        self.receive_timeout = receive_timeout

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        loop = asyncio.new_event_loop()
        mp3_in: asyncio.Queue[bytes | None] = asyncio.Queue()  # holds at most one utterance's MP3
        pump = loop.create_task(self._pump(text, mp3_in))
        decoder = Mp3Decoder()
        received = False
        try:
            while (data := self._next(loop, pump, mp3_in, cancelled)) is not None:
                received = True
                audio = decoder.push(data)
                if audio.size:
                    yield audio
            if cancelled():
                return
            tail = decoder.flush()
            if received and decoder.frames == 0:
                raise TTSError("edge-tts sent audio that could not be decoded as MP3: upgrade edge-tts or use --tts espeak")
            if tail.size:
                yield tail
        finally:
            self._stop(loop, pump)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _pump(self, text: str, mp3_in: asyncio.Queue[bytes | None]) -> None:
        """Moves MP3 bytes from edge-tts to the queue without ever waiting outside edge-tts's
        own network reads, so cancelling this task always lands there and closes the websocket."""
        communicate = edge_tts.Communicate(
            text,
            self.voice,
            rate=self.rate,
            proxy=self.proxy,
            connect_timeout=self.connect_timeout,
            receive_timeout=self.receive_timeout,
        )
        async for chunk in communicate.stream():
            if chunk["type"] == "audio":
                mp3_in.put_nowait(chunk["data"])
        mp3_in.put_nowait(None)

    def _next(
        self,
        loop: asyncio.AbstractEventLoop,
        pump: asyncio.Task,
        mp3_in: asyncio.Queue[bytes | None],
        cancelled: Callable[[], bool],
    ) -> bytes | None:
        """The next MP3 bytes; None at the end of the utterance or once cancelled."""
        getter = loop.create_task(mp3_in.get())
        try:
            while not cancelled():
                loop.run_until_complete(asyncio.wait([getter, pump], timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED))
                if getter.done():
                    return getter.result()
                if pump.done() and (error := pump.exception()) is not None:
                    raise self._translate(error) from error
            return None
        finally:
            if not getter.done():
                getter.cancel()
                loop.run_until_complete(asyncio.wait([getter]))

    @staticmethod
    def _stop(loop: asyncio.AbstractEventLoop, pump: asyncio.Task) -> None:
        """Cancel the transfer: first politely (websocket close handshake), then abruptly."""
        for _ in range(2):
            if pump.done():
                break
            pump.cancel()
            loop.run_until_complete(asyncio.wait([pump], timeout=CLOSE_GRACE_S))
        if not pump.done():
            logger.warning("edge-tts: the connection did not close within %.1f s", 2 * CLOSE_GRACE_S)
        elif not pump.cancelled():
            pump.exception()  # already reported (or irrelevant after a cancel); marks it retrieved

    def _translate(self, error: Exception) -> TTSError:
        via = f" through the proxy {redact_url(self.proxy)}" if self.proxy else ""
        if isinstance(error, aiohttp.WSServerHandshakeError):
            return TTSError(
                f"the Microsoft speech service refused edge-tts (HTTP {error.status}): "
                "upgrade edge-tts (pip install -U edge-tts) or use --tts espeak"
            )
        if isinstance(error, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
            return TTSError(f"edge-tts could not reach the Microsoft service{via}: {FALLBACK_HINT}")
        if isinstance(error, NoAudioReceived):
            return TTSError(
                f"edge-tts returned no audio for voice {self.voice!r}: check the voice name "
                "(edge-tts --list-voices) or use --tts espeak"
            )
        if isinstance(error, EdgeTTSException):
            return TTSError(f"edge-tts failed ({error}): upgrade edge-tts or use --tts espeak")
        return TTSError(f"edge-tts failed unexpectedly ({error!r}): use --tts espeak")


def reachable(timeout: float = 3.0, voice: str = DEFAULT_VOICE, proxy: str | None = None) -> bool:
    """Whether edge-tts can synthesise right now: the first audio of a short probe arrives within
    `timeout` seconds (for `--tts auto` at start-up; blocking, needs the internet)."""
    deadline = time.monotonic() + timeout
    backend = EdgeTTS(voice, proxy=proxy, connect_timeout=max(1, math.ceil(timeout)))
    try:
        with contextlib.closing(backend.stream(PROBE_TEXT, lambda: time.monotonic() > deadline)) as audio:
            for _ in audio:
                return True
        logger.warning("edge-tts sent no audio within %.1f s", timeout)
    except TTSError as error:
        logger.warning("edge-tts is not available: %s", error)
    return False
