"""espeak-ng through ctypes, from the library and voice data inside the espeakng-loader wheel.

Besides audio, the synth callback receives espeak's phoneme events (IPA names
with their exact sample positions): `EspeakTTS` turns them into per-sample
viseme labels, so the lite engine's mouth follows the phonemes espeak spoke.

Works offline. espeak-ng keeps one global synthesizer per process (one callback,
one current voice), so there is exactly one `EspeakLibrary` per process,
obtained with `EspeakLibrary.shared()`; it serializes voice selection and
synthesis with a lock. A second initialisation would steal the callback from
the first, which is why the constructor is not called directly.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Callable, Iterator

import numpy as np

from media import SAMPLE_RATE
from tts.base import Resampler, TTSBackend, TTSError
from visemes import LabelledAudio, label_samples

logger = logging.getLogger(__name__)

AUDIO_OUTPUT_SYNCHRONOUS = 2
BUFFER_MS = 60  # espeak hands audio to the callback in pieces of about this length
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE = 1
EE_OK = 0
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7


class EspeakEvent(ctypes.Structure):
    """espeak_EVENT from speak_lib.h (the id union is read as its 8-byte phoneme name)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(EspeakEvent))


class EspeakLibrary:
    """The process-wide espeak-ng instance (mirrors the C library's global state)."""

    _shared: "EspeakLibrary | None" = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> "EspeakLibrary":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        if EspeakLibrary._shared is not None:
            raise RuntimeError("espeak-ng is process-global: use EspeakLibrary.shared()")
        try:
            import espeakng_loader
        except ImportError:
            raise TTSError("espeak TTS needs the espeakng-loader package: pip install -r requirements.txt") from None
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        data_path = espeakng_loader.get_data_path().encode()
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA
        self.sample_rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, options)
        if self.sample_rate <= 0:
            raise TTSError(f"espeak-ng failed to initialise with data at {data_path.decode()}")
        self._lock = threading.Lock()
        self._pieces: list[np.ndarray] = []
        self._phonemes: list[tuple[int, str]] = []
        self._cancelled: Callable[[], bool] = lambda: False
        self._callback = SYNTH_CALLBACK(self._on_audio)  # kept referenced for the library's lifetime
        self._lib.espeak_SetSynthCallback(self._callback)
        logger.info("espeak-ng ready (%d Hz)", self.sample_rate)

    def _on_audio(self, wav, count: int, events) -> int:
        index = 0
        while events and events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_PHONEME:
                self._phonemes.append((int(event.sample), bytes(event.id).split(b"\0")[0].decode("utf-8", "replace")))
            index += 1
        if count > 0 and wav:
            self._pieces.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        return 1 if self._cancelled() else 0

    def check_voice(self, voice: str) -> None:
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise TTSError(f"espeak has no voice {voice!r}: try en-us, en, cmn, de, fr, es, ja")

    def synthesize(self, text: str, voice: str, rate_wpm: int, cancelled: Callable[[], bool]
                   ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Audio for `text` at self.sample_rate and its phonemes as (start sample, IPA name)
        (blocking; espeak runs far faster than real time)."""
        encoded = text.encode("utf-8")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise TTSError(f"espeak has no voice {voice!r}: try en-us, en, cmn, de, fr, es, ja")
            self._lib.espeak_SetParameter(PARAM_RATE, rate_wpm, 0)
            self._pieces, self._phonemes, self._cancelled = [], [], cancelled
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            pieces, phonemes = self._pieces, self._phonemes
            self._pieces, self._phonemes, self._cancelled = [], [], (lambda: False)
        if status != EE_OK and not cancelled():
            raise TTSError(f"espeak-ng failed to synthesise (error {status})")
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), phonemes


class EspeakTTS(TTSBackend):
    """Offline TTS: fast, robotic, always available."""

    name = "espeak"

    def __init__(self, library: EspeakLibrary, voice: str = "en-us", rate_wpm: int = 165):
        library.check_voice(voice)
        self.library = library
        self.voice = voice
        self.rate_wpm = rate_wpm

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        for labelled in self.stream_labelled(text, cancelled):
            yield labelled.samples

    def stream_labelled(self, text: str, cancelled: Callable[[], bool]) -> Iterator[LabelledAudio]:
        audio, phonemes = self.library.synthesize(text, self.voice, self.rate_wpm, cancelled)
        if cancelled() or audio.size == 0:
            return
        resampler = Resampler(self.library.sample_rate)
        samples = np.concatenate([resampler.push(audio), resampler.flush()])
        scale = SAMPLE_RATE / self.library.sample_rate
        timed = [(int(round(start * scale)), name) for start, name in phonemes]
        yield LabelledAudio(samples, label_samples(timed, len(samples)))
