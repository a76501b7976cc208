"""Any OpenAI-compatible `/v1/audio/speech` endpoint, streamed as raw PCM.

`response_format="pcm"` is 24 kHz signed 16-bit little-endian mono with no
header, so each piece of the HTTP body is audio that can be resampled and
played at once. The HTTP client is asynchronous and lives on the process's
`NetworkLoop`: one client (one connection pool) per process, shared by every
session and voice; an interrupt closes the response at once, and a server that
stops sending ends the sentence with an error after a deadline.
"""

from __future__ import annotations

import logging
import os
import re
from typing import AsyncIterator, Callable, Iterator

import httpx2
import numpy as np
import openai

from tts.base import Resampler, TTSBackend, TTSError
from tts.netloop import DEFAULT_BETWEEN_PIECES_S, DEFAULT_FIRST_PIECE_S, NetworkLoop, StreamStalled

logger = logging.getLogger(__name__)

PCM_RATE = 24000
PIECE_BYTES = 4800  # 100 ms of 24 kHz s16: small enough that audio starts early
S16_SCALE = 32768.0
OPENAI_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"  # local servers ignore the key; the client needs one
DEFAULT_VOICE = "alloy"
# A voice is passed to someone else's server: a short plain token, nothing else.
VOICE_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_voice(voice: str) -> str:
    if not isinstance(voice, str) or not VOICE_TOKEN.fullmatch(voice):
        raise TTSError(f"bad voice {str(voice)[:60]!r} for the openai backend: use a name such as alloy, nova or "
                       "echo (letters, digits, '_', '-', '.'; at most 64)")
    return voice


class SpeechService:
    """The process-wide client for one OpenAI-compatible speech endpoint."""

    def __init__(self, base_url: str, model: str = "tts-1", api_key: str | None = None,
                 network: NetworkLoop | None = None, max_retries: int = 1,
                 first_piece_s: float = DEFAULT_FIRST_PIECE_S, between_pieces_s: float = DEFAULT_BETWEEN_PIECES_S):
        self.base_url = base_url
        self.model = model
        self.first_piece_s = first_piece_s
        self.between_pieces_s = between_pieces_s
        self._owns_network = network is None
        self.network = network or NetworkLoop()
        timeout = httpx2.Timeout(connect=first_piece_s, read=max(first_piece_s, between_pieces_s),
                                 write=first_piece_s, pool=first_piece_s)
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or os.environ.get(OPENAI_KEY_ENV) or NO_KEY,
                                         timeout=timeout, max_retries=max_retries)

    async def pcm(self, text: str, voice: str) -> AsyncIterator[bytes]:
        async with self.client.audio.speech.with_streaming_response.create(
            model=self.model, voice=voice, input=text, response_format="pcm"
        ) as response:
            async for piece in response.iter_bytes(PIECE_BYTES):
                yield piece

    def close(self) -> None:
        try:
            self.network.run(self.client.close(), timeout=2.0)
        except Exception as exc:
            logger.debug("closing the speech client: %r", exc)
        if self._owns_network:
            self.network.close()


class OpenAISpeechTTS(TTSBackend):
    """TTS through `/v1/audio/speech` (OpenAI, or a local server that speaks its API).

    Light: a voice over a shared `SpeechService`. Built alone (a base URL and no
    service) it owns a service of its own and closes it in `close()`.
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str = "tts-1", voice: str = DEFAULT_VOICE,
                 api_key: str | None = None, max_retries: int = 1, service: SpeechService | None = None,
                 first_piece_s: float = DEFAULT_FIRST_PIECE_S, between_pieces_s: float = DEFAULT_BETWEEN_PIECES_S):
        self.voice = check_voice(voice)
        self._owns_service = service is None
        if service is None:
            if not base_url:
                raise TTSError("the openai TTS backend needs a base URL (--tts-base-url)")
            service = SpeechService(base_url, model, api_key, max_retries=max_retries,
                                    first_piece_s=first_piece_s, between_pieces_s=between_pieces_s)
        self.service = service
        self.base_url = service.base_url
        self.model = service.model

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        service = self.service
        resampler = Resampler(PCM_RATE)
        odd = b""  # a byte of a sample split across two pieces
        try:
            for piece in service.network.iterate(service.pcm(text, self.voice), cancelled,
                                                 service.first_piece_s, service.between_pieces_s):
                data = odd + piece
                usable = len(data) - len(data) % 2
                odd = data[usable:]
                if usable:
                    samples = np.frombuffer(data[:usable], "<i2").astype(np.float32) / S16_SCALE
                    audio = resampler.push(samples)
                    if audio.size:
                        yield audio
        except StreamStalled as error:
            raise TTSError(f"the speech endpoint at {self.base_url} {error}: check the server or use --tts espeak") from error
        except openai.APIError as error:
            raise self._translate(error) from error
        except httpx2.TimeoutException as error:  # while reading the body; the openai client maps only the request
            raise TTSError(f"the speech endpoint at {self.base_url} stalled mid-stream: "
                           "check the server or use --tts espeak") from error
        except httpx2.TransportError as error:
            raise TTSError(f"the speech endpoint at {self.base_url} dropped the connection mid-stream ({error}): "
                           "check the server or use --tts espeak") from error
        if not cancelled():
            tail = resampler.flush()
            if tail.size:
                yield tail

    def _translate(self, error: openai.APIError) -> TTSError:
        where = f"the speech endpoint at {self.base_url}"
        if isinstance(error, openai.AuthenticationError):
            return TTSError(f"{where} rejected the API key (401): set {OPENAI_KEY_ENV}")
        if isinstance(error, openai.NotFoundError):
            return TTSError(f"{where} has no /audio/speech or no model {self.model!r} (404): check the TTS URL and model")
        if isinstance(error, openai.RateLimitError):
            return TTSError(f"{where} is rate limited (429): wait a moment or check the account's quota")
        if isinstance(error, openai.APITimeoutError):
            return TTSError(f"{where} did not answer in time: check the server or use --tts espeak")
        if isinstance(error, openai.APIConnectionError):
            return TTSError(f"could not reach {where}: check the TTS URL and the network, or use --tts espeak")
        status = getattr(error, "status_code", None)
        code = f" ({status})" if status else ""
        return TTSError(f"{where} failed{code}: {error.message}")

    def close(self) -> None:
        if self._owns_service:
            self.service.close()
