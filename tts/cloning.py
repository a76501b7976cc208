"""Voice-cloning TTS services LiveTalking users run locally, over their documented HTTP APIs.

    --tts sovits     GPT-SoVITS api_v2:  POST /tts (JSON; streaming_mode, WAV header then PCM)
    --tts cosyvoice  CosyVoice FastAPI:  GET /inference_zero_shot (form + prompt_wav) or /inference_sft;
                     raw s16le PCM (22050 Hz for CosyVoice 1, 24000 for 2: --tts-sample-rate)
    --tts fishtts    Fish-Speech:        POST /v1/tts (JSON; streaming, WAV header then PCM)
    --tts xtts       XTTS streaming server: POST /clone_speaker (the reference, once), POST /tts_stream (PCM 24 kHz)

Every one is streamed: audio is played while the service still speaks; an
interrupt closes the connection at once and a stalled service ends the sentence
after --tts-timeout (main's NetworkLoop, one HTTP client per service and process). The reference voice (`tts.reference`) comes
from --REF_FILE/--REF_TEXT, /offer's refaudio/reftext or /human's tts dict.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import httpx2
import numpy as np

from tts.base import TTSBackend, TTSError
from tts.httpaudio import PCMDecoder, ServiceRequest, error_text, stream_pcm
from tts.netloop import DEFAULT_FIRST_PIECE_S, NetworkLoop
from tts.reference import VoiceReference

logger = logging.getLogger(__name__)

SERVICES = ("sovits", "cosyvoice", "fishtts", "xtts")
DEFAULT_SERVERS = {"sovits": "http://127.0.0.1:9880", "cosyvoice": "http://127.0.0.1:50000",
                   "fishtts": "http://127.0.0.1:8080", "xtts": "http://127.0.0.1:9000"}
DEFAULT_RATES = {"sovits": 32000, "cosyvoice": 22050, "fishtts": 44100, "xtts": 24000}
DEFAULT_LANGS = {"sovits": "auto", "xtts": "en"}
COSYVOICE_DEFAULT_SPEAKER = "中文女"
CLOSE_TIMEOUT_S = 2.0
XTTS_CHUNK_SIZE = "20"  # tokens per streamed piece: smaller starts sooner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the local TTS services (LiveTalking's spellings are accepted too)."""
    parser.add_argument("--tts-server", "--TTS_SERVER", dest="tts_server", default=None,
                        help="URL of the sovits/cosyvoice/fishtts/xtts service (default: its usual local port)")
    parser.add_argument("--ref-file", "--REF_FILE", dest="ref_file", default=None,
                        help="reference recording the cloned voice imitates (a path inside --data-dir), "
                             "or a Fish-Speech voice id")
    parser.add_argument("--ref-text", "--REF_TEXT", dest="ref_text", default=None,
                        help="what the reference recording says")
    parser.add_argument("--tts-lang", dest="tts_lang", default=None,
                        help="language sent to sovits (default auto) and xtts (default en)")
    parser.add_argument("--tts-sample-rate", dest="tts_sample_rate", type=int, default=None,
                        help="PCM rate of a service that sends no header (cosyvoice: 22050, CosyVoice2: 24000)")


@dataclass
class ServiceSettings:
    """Where a service runs and how to talk to it, and the one connection pool every session shares.

    The HTTP client is asynchronous and lives on a `NetworkLoop` of its own
    (built on first use, closed by `close()` at server shutdown).
    """

    service: str
    server: str | None = None
    lang: str | None = None
    sample_rate: int | None = None
    timeout_s: float = DEFAULT_FIRST_PIECE_S  # first audio, and between pieces
    speakers: dict[tuple[str, int], dict] = field(default_factory=dict)  # xtts: cloned speaker per recording
    lock: threading.Lock = field(default_factory=threading.Lock)
    _network: NetworkLoop | None = field(default=None, init=False, repr=False)
    _client: httpx2.AsyncClient | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return (self.server or DEFAULT_SERVERS[self.service]).rstrip("/")

    @property
    def rate(self) -> int:
        return self.sample_rate or DEFAULT_RATES[self.service]

    @property
    def language(self) -> str:
        return self.lang or DEFAULT_LANGS.get(self.service, "auto")

    def connection(self) -> tuple[NetworkLoop, httpx2.AsyncClient]:
        with self.lock:
            if self._network is None:
                self._network = NetworkLoop(name=f"tts-{self.service}")
                timeout = httpx2.Timeout(self.timeout_s)

                async def make() -> httpx2.AsyncClient:
                    return httpx2.AsyncClient(timeout=timeout)

                self._client = self._network.run(make())
            return self._network, self._client

    def close(self) -> None:
        with self.lock:
            network, client, self._network, self._client = self._network, self._client, None, None
        if network is None:
            return
        try:
            network.run(client.aclose(), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:  # shutting down: nothing to do about a client that will not close
            logger.debug("closing the %s client: %r", self.service, exc)
        network.close()


class ServiceTTS(TTSBackend):
    """A voice (or none) on a local TTS service; light, shared by the sessions that use it."""

    label = "TTS service"

    def __init__(self, settings: ServiceSettings, reference: VoiceReference | None, voice: str | None = None):
        self.settings = settings
        self.reference = reference
        self.voice = voice

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        network, client = self.settings.connection()
        yield from stream_pcm(self.label, network, client, self.request(text), self.decoder(), cancelled,
                              self.settings.timeout_s)

    def request(self, text: str) -> ServiceRequest:
        raise NotImplementedError

    def decoder(self) -> PCMDecoder:
        return PCMDecoder(self.settings.rate)

    def need_recording(self) -> VoiceReference:
        if self.reference is None or self.reference.audio is None:
            raise TTSError(f"{self.label} clones a voice: give a reference recording inside data/ "
                           f"(--REF_FILE, refaudio in /offer, or tts.ref_file in /human)")
        return self.reference


class SovitsTTS(ServiceTTS):
    """GPT-SoVITS api_v2. The service reads the recording itself, so it gets the path (same host)."""

    name = "sovits"
    label = "GPT-SoVITS"

    def request(self, text: str) -> ServiceRequest:
        reference = self.need_recording()
        body = {"text": text, "text_lang": self.settings.language, "ref_audio_path": str(reference.audio),
                "prompt_text": reference.text, "prompt_lang": self.settings.language,
                "media_type": "wav", "streaming_mode": True}
        return ServiceRequest("POST", f"{self.settings.url}/tts", {"json": body})

    def decoder(self) -> PCMDecoder:
        return PCMDecoder(self.settings.rate, wav_header=True)


class CosyVoiceTTS(ServiceTTS):
    """CosyVoice's FastAPI server: zero-shot cloning from an uploaded recording, else a built-in speaker."""

    name = "cosyvoice"
    label = "CosyVoice"

    def request(self, text: str) -> ServiceRequest:
        url = self.settings.url
        if self.reference is not None and self.reference.audio is not None:
            files = {"prompt_wav": ("prompt_wav", self.reference.read_audio(), "application/octet-stream")}
            return ServiceRequest("GET", f"{url}/inference_zero_shot",
                                  {"data": {"tts_text": text, "prompt_text": self.reference.text}, "files": files})
        speaker = self.voice or COSYVOICE_DEFAULT_SPEAKER
        return ServiceRequest("GET", f"{url}/inference_sft", {"data": {"tts_text": text, "spk_id": speaker}})


class FishSpeechTTS(ServiceTTS):
    """Fish-Speech's API server: a recording sent inline (base64), or a voice stored on the service by id."""

    name = "fishtts"
    label = "Fish-Speech"

    def request(self, text: str) -> ServiceRequest:
        body: dict = {"text": text, "format": "wav", "streaming": True, "use_memory_cache": "on"}
        reference = self.reference
        if reference is not None and reference.audio is not None:
            audio = base64.b64encode(reference.read_audio()).decode("ascii")
            body["references"] = [{"audio": audio, "text": reference.text}]
        elif reference is not None and reference.voice_id:
            body["reference_id"] = reference.voice_id
        elif self.voice:
            body["reference_id"] = self.voice
        return ServiceRequest("POST", f"{self.settings.url}/v1/tts", {"json": body})

    def decoder(self) -> PCMDecoder:
        return PCMDecoder(self.settings.rate, wav_header=True)


class XTTS(ServiceTTS):
    """Coqui's XTTS streaming server: the reference is cloned once per process, then streamed as PCM."""

    name = "xtts"
    label = "XTTS"

    def speaker(self) -> dict:
        reference = self.need_recording()
        key = (str(reference.audio), reference.audio.stat().st_mtime_ns)
        with self.settings.lock:
            cached = self.settings.speakers.get(key)
        if cached is not None:
            return cached
        network, client = self.settings.connection()
        url = f"{self.settings.url}/clone_speaker"
        files = {"wav_file": ("reference.wav", reference.read_audio())}
        try:
            response = network.run(client.post(url, files=files), timeout=self.settings.timeout_s + 1)
        except (httpx2.HTTPError, concurrent.futures.TimeoutError) as exc:
            raise TTSError(f"could not clone the voice with XTTS at {url} ({type(exc).__name__}): "
                           f"start it or fix --tts-server") from exc
        if response.status_code != 200:
            raise TTSError(f"XTTS answered {response.status_code} at {url}: {error_text(response.content)}")
        try:
            speaker = response.json()
        except ValueError:
            speaker = None
        if not isinstance(speaker, dict) or not {"gpt_cond_latent", "speaker_embedding"} <= speaker.keys():
            raise TTSError(f"XTTS at {url} answered without a speaker (gpt_cond_latent, speaker_embedding)")
        with self.settings.lock:
            self.settings.speakers[key] = speaker
        logger.info("xtts: cloned the voice of %s", reference.audio.name)
        return speaker

    def request(self, text: str) -> ServiceRequest:
        speaker = self.speaker()
        body = {"text": text, "language": self.settings.language, "add_wav_header": False,
                "stream_chunk_size": XTTS_CHUNK_SIZE, "gpt_cond_latent": speaker["gpt_cond_latent"],
                "speaker_embedding": speaker["speaker_embedding"]}
        return ServiceRequest("POST", f"{self.settings.url}/tts_stream", {"json": body})


BACKENDS: dict[str, type[ServiceTTS]] = {cls.name: cls for cls in (SovitsTTS, CosyVoiceTTS, FishSpeechTTS, XTTS)}
