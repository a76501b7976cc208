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
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from media import SAMPLE_RATE
from tts.base import Resampler, TTSBackend, TTSError
from speech.visemes import LabelledAudio, label_samples

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
PHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phonememode: IPA as UTF-8
CLAUSE_MARKS = ".?!,:;"  # the clause endings a phonemized clause reports


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
VARIANTS_DIR = os.path.join("voices", "!v")
# What a voice request may look like at all, before it is looked up: "en-us", "English (America)", "en+Annie".
VOICE_SHAPE = re.compile(r"[A-Za-z0-9 _(),-]{1,48}(\+[A-Za-z0-9_-]{1,32})?")
VOICE_HINT = "try en-us, en, cmn, de, fr, es, ja, optionally with a variant such as en-us+Annie"


class EspeakVoice(ctypes.Structure):
    """espeak_VOICE from speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated language) pairs, ended by a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def voice_languages(voice: EspeakVoice) -> list[str]:
    languages, address = [], voice.languages
    while address and ctypes.c_ubyte.from_address(address).value != 0:
        language = ctypes.string_at(address + 1)
        languages.append(language.decode(errors="replace"))
        address += 2 + len(language)
    return languages


@dataclass(frozen=True)
class Clause:
    """One clause of phonemized text: IPA phonemes (words separated by spaces, stress marks
    included) and the punctuation mark that ended it ("" when none of CLAUSE_MARKS)."""

    phonemes: str
    punctuation: str


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
        self._lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        self._lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(EspeakVoice))
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
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
        self._voices = self._list_voices()
        variants_dir = os.path.join(espeakng_loader.get_data_path(), VARIANTS_DIR)
        self._variants = {name.lower(): name for name in os.listdir(variants_dir)} if os.path.isdir(variants_dir) else {}
        logger.info("espeak-ng ready (%d Hz, %d voices, %d variants)", self.sample_rate, len(self._voices),
                    len(self._variants))

    def _list_voices(self) -> dict[str, str]:
        """Every language code and voice name the library reports, lower-cased -> as espeak spells it."""
        voices: dict[str, str] = {}
        listed = self._lib.espeak_ListVoices(None)
        index = 0
        while listed and listed[index]:
            voice = listed[index].contents
            for name in [*voice_languages(voice), (voice.name or b"").decode(errors="replace")]:
                if name:
                    voices.setdefault(name.lower(), name)
            index += 1
        return voices

    def resolve_voice(self, requested: str) -> str:
        """The voice as espeak spells it, if it is one the library lists (else TTSError).

        Only names from the library's own lists ever reach espeak-ng: its voice
        parser takes file paths and overflows on long variant names.
        """
        if not isinstance(requested, str) or not VOICE_SHAPE.fullmatch(requested):
            raise TTSError(f"espeak has no voice {str(requested)[:60]!r}: {VOICE_HINT}")
        base, _, variant = requested.partition("+")
        voice = self._voices.get(base.strip().lower())
        if voice is None or (variant and variant.lower() not in self._variants):
            raise TTSError(f"espeak has no voice {requested!r}: {VOICE_HINT}")
        return f"{voice}+{self._variants[variant.lower()]}" if variant else voice

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

    def phonemize(self, text: str, voice: str) -> list[Clause]:
        """espeak-ng's IPA phonemes of `text`, clause by clause, as espeak_TextToPhonemes reads it
        (the way Piper phonemizes), each with the punctuation mark that ended the clause."""
        voice = self.resolve_voice(voice)
        raw = text.encode("utf-8")
        buffer = ctypes.create_string_buffer(raw)
        start = ctypes.addressof(buffer)
        pointer = ctypes.c_void_p(start)
        clauses: list[Clause] = []
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise TTSError(f"espeak could not load voice {voice!r}: {VOICE_HINT}")
            for _ in range(len(raw) + 1):  # each call reads at least one character
                if not pointer.value:
                    break
                before = pointer.value
                phonemes = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), CHARS_UTF8, PHONEMES_IPA)
                after = pointer.value or start + len(raw)
                read = raw[before - start:after - start].decode("utf-8", "replace")
                if pointer.value:
                    read = read[:-1]  # espeak reads one character past the end of the clause
                mark = read.rstrip()[-1:]
                clauses.append(Clause((phonemes or b"").decode("utf-8", "replace"),
                                      mark if mark in CLAUSE_MARKS else ""))
        return clauses

    def check_voice(self, voice: str) -> str:
        """The resolved voice, after checking that espeak can load it."""
        resolved = self.resolve_voice(voice)
        with self._lock:
            if self._lib.espeak_SetVoiceByName(resolved.encode()) != EE_OK:
                raise TTSError(f"espeak could not load voice {voice!r}: {VOICE_HINT}")
        return resolved

    def synthesize(self, text: str, voice: str, rate_wpm: int, cancelled: Callable[[], bool]
                   ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Audio for `text` at self.sample_rate and its phonemes as (start sample, IPA name)
        (blocking; espeak runs far faster than real time)."""
        encoded = text.encode("utf-8")
        voice = self.resolve_voice(voice)
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
        self.library = library
        self.voice = library.check_voice(voice)
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
