"""Any OpenAI-compatible `/v1/audio/speech` endpoint, streamed as raw PCM.

`response_format="pcm"` is 24 kHz signed 16-bit little-endian mono with no
header, so each piece of the HTTP body is audio that can be resampled and
played at once.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

import httpx2
import numpy as np
import openai

from tts.base import Resampler, TTSBackend, TTSError

logger = logging.getLogger(__name__)

PCM_RATE = 24000
PIECE_BYTES = 4800  # 100 ms of 24 kHz s16: small enough that audio starts early
S16_SCALE = 32768.0
OPENAI_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"  # local servers ignore the key; the client needs one


class OpenAISpeechTTS(TTSBackend):
    """TTS through `/v1/audio/speech` (OpenAI, or a local server that speaks its API)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "tts-1",
        voice: str = "alloy",
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 1,
    ):
        self.base_url = base_url
        self.model = model
        self.voice = voice
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get(OPENAI_KEY_ENV) or NO_KEY,
            timeout=timeout,
            max_retries=max_retries,
        )
        self.timeout = timeout

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        resampler = Resampler(PCM_RATE)
        odd = b""  # a byte of a sample split across two pieces
        try:
            with self._client.audio.speech.with_streaming_response.create(
                model=self.model, voice=self.voice, input=text, response_format="pcm"
            ) as response:
                for piece in response.iter_bytes(PIECE_BYTES):
                    if cancelled():
                        return  # leaving the block closes the connection
                    data = odd + piece
                    usable = len(data) - len(data) % 2
                    odd = data[usable:]
                    if usable:
                        samples = np.frombuffer(data[:usable], "<i2").astype(np.float32) / S16_SCALE
                        audio = resampler.push(samples)
                        if audio.size:
                            yield audio
        except openai.APIError as error:
            raise self._translate(error) from error
        except httpx2.TimeoutException as error:  # while reading the body; the openai client maps only the request
            raise TTSError(f"the speech endpoint at {self.base_url} stalled for {self.timeout:g} s mid-stream: "
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
            return TTSError(f"{where} did not answer within {self.timeout:g} s: check the server or use --tts espeak")
        if isinstance(error, openai.APIConnectionError):
            return TTSError(f"could not reach {where}: check the TTS URL and the network, or use --tts espeak")
        status = getattr(error, "status_code", None)
        code = f" ({status})" if status else ""
        return TTSError(f"{where} failed{code}: {error.message}")

    def close(self) -> None:
        self._client.close()
