"""The per-session speech stage: utterances -> TTS -> 20 ms chunks with start/end events
(and viseme codes, when the backend labels its audio with its phonemes).

A `TTSWorker` owns one daemon thread and a bounded queue of segments (text for
a backend to speak, or ready audio from /humanaudio). It cuts audio into 20 ms
chunks, marks an utterance's first chunk with a `start` event and its last with
an `end` event, pads each utterance to whole video frames, and hands the chunks
to the engine (which blocks it when the engine is full: back-pressure).
Every segment carries the epoch it was queued in; an interrupt bumps the
engine's epoch, which cancels the synthesis in progress and drops the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from basereal import BaseReal
from media import CHUNK_SAMPLES, SAMPLE_RATE, AudioChunk, SpeechEvent, float_to_s16
from speech.budget import SpeechBudget
from speech.textproc import clean_for_speech, split_sentences
from tts.base import TTSBackend, TTSError
from speech.visemes import LabelledAudio, Viseme, downsample_codes
from sync.gate import DROPPED, HELD, Gate
from sync.queues import BoundedQueue

logger = logging.getLogger(__name__)

SEGMENT_QUEUE_SIZE = 256
GATE_POLL_S = 0.02  # a held segment checks for an interrupt or a stop this often
S16_MAX = 32767.0
JOIN_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Segment:
    """One piece of an utterance: text for `backend`, or ready 16 kHz audio (int16: half the memory)."""

    utterance_id: str
    utterance_text: str
    epoch: int
    first: bool
    last: bool
    text: str = ""
    audio: np.ndarray | None = None
    backend: TTSBackend | None = None
    gate: Gate | None = None  # a prepared reply: synthesised at once, handed to the engine only once released

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.audio is None else self.audio.size / SAMPLE_RATE


class QueueFull(Exception):
    """The session already has too much speech queued."""


class TTSWorker:
    """Speaks queued segments into one engine, in order, honouring interrupts."""

    def __init__(self, engine: BaseReal, on_error: Callable[[str], None], name: str = "tts",
                 budget: SpeechBudget | None = None,
                 on_first_audio: Callable[[str, float], None] | None = None):
        self.engine = engine
        self.budget = budget or SpeechBudget()
        self._on_error = on_error
        self._on_first_audio = on_first_audio  # (backend name, seconds to a sentence's first audio)
        self._segments: BoundedQueue[Segment] = BoundedQueue(SEGMENT_QUEUE_SIZE)
        self._stopping = threading.Event()
        self._open: str | None = None  # utterance whose start went out and whose end has not
        self._open_chunks = 0
        self._start: SpeechEvent | None = None
        self._first_audio_s: float | None = None  # of the segment being spoken, until it reaches the engine
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- producers (event loop side) --------------------------------------
    def say(self, text: str, backend: TTSBackend, gate: Gate | None = None) -> tuple[str, int]:
        """Queue text as one utterance; returns (utterance id, sentence count).

        With a `gate`, its first audio is made now but waits for the gate: released, it plays
        as if just queued; dropped, it vanishes without an event."""
        sentences = split_sentences(clean_for_speech(text))
        if not sentences:
            raise ValueError("nothing speakable in the text (only markup, emoji or punctuation)")
        utterance_id = uuid.uuid4().hex[:12]
        epoch = self.engine.epoch
        segments = [
            Segment(utterance_id, text, epoch, first=i == 0, last=i == len(sentences) - 1, text=s, backend=backend,
                    gate=gate)
            for i, s in enumerate(sentences)
        ]
        self._enqueue(segments)
        return utterance_id, len(sentences)

    def play(self, audio: np.ndarray, label: str) -> str:
        """Queue decoded 16 kHz audio (int16, or float32 in [-1, 1]) as one utterance.

        Raises SpeechBudgetFull when the session cannot hold that many more seconds.
        """
        if audio.dtype != np.int16:
            audio = float_to_s16(audio)
        utterance_id = uuid.uuid4().hex[:12]
        segment = Segment(utterance_id, label, self.engine.epoch, first=True, last=True, audio=audio)
        self.budget.reserve(segment.audio_seconds)
        try:
            self._enqueue([segment])
        except QueueFull:
            self.budget.release(segment.audio_seconds)
            raise
        return utterance_id

    def _enqueue(self, segments: list[Segment]) -> None:
        if not self._segments.put_all(segments):
            raise QueueFull(f"too much speech queued ({self._segments.maxsize} sentences): interrupt or wait")

    @property
    def pending(self) -> int:
        """Sentences queued and not yet being spoken."""
        return self._segments.qsize()

    def clear(self) -> None:
        """Drop queued segments (an interrupt; the epoch bump cancels the one in progress)."""
        dropped = self._segments.clear()
        self.budget.release(sum(segment.audio_seconds for segment in dropped))

    def stop(self) -> None:
        self._stopping.set()
        self.clear()
        self._thread.join(JOIN_TIMEOUT_S)

    # ---- worker thread ----------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                segment = self._segments.get(timeout=0.1)
            except queue.Empty:
                continue
            if segment.epoch != self.engine.epoch or (segment.gate is not None and segment.gate.state == DROPPED):
                self.budget.release(segment.audio_seconds)
                continue
            try:
                self._speak(segment)
            except TTSError as exc:
                logger.warning("TTS failed for utterance %s: %s", segment.utterance_id, exc)
                self._on_error(str(exc))
                self._close_utterance(segment)
            except Exception as exc:
                logger.exception("TTS crashed for utterance %s", segment.utterance_id)
                self._on_error(f"speech synthesis failed: {exc}")
                self._close_utterance(segment)
            finally:
                self.budget.release(segment.audio_seconds)  # played, cut short or failed: no longer held

    def _cancelled(self, epoch: int) -> Callable[[], bool]:
        return lambda: self._stopping.is_set() or self.engine.epoch != epoch

    def _audio_of(self, segment: Segment) -> Iterator[np.ndarray | LabelledAudio]:
        if segment.audio is not None:
            yield segment.audio.astype(np.float32) / S16_MAX
        else:
            assert segment.backend is not None
            yield from segment.backend.stream_labelled(segment.text, self._cancelled(segment.epoch))

    def _speak(self, segment: Segment) -> None:
        cancelled = self._cancelled(segment.epoch)
        if segment.first:
            self._open = segment.utterance_id
            self._open_chunks = 0
            self._start = SpeechEvent("start", segment.utterance_id, segment.utterance_text)
        pending: list[tuple[np.ndarray, np.ndarray | None]] = []  # the newest full chunk waits: it may need the end event
        buffer = np.zeros(0, np.float32)
        requested = time.perf_counter()
        self._first_audio_s: float | None = None
        labels: np.ndarray | None = None  # per-sample viseme codes of `buffer`, when the backend gives them
        for piece in self._audio_of(segment):
            if cancelled():
                return
            if requested is not None and segment.backend is not None:
                self._first_audio_s = time.perf_counter() - requested  # reported once handed over (not if dropped)
                if segment.gate is not None:
                    segment.gate.mark("tts_first_audio")
            requested = None
            samples, codes = (piece.samples, piece.codes) if isinstance(piece, LabelledAudio) else (piece, None)
            samples = np.asarray(samples, np.float32).reshape(-1)
            if codes is not None or labels is not None:
                fresh = codes if codes is not None else np.full(len(samples), Viseme.NEUTRAL, np.uint8)
                labels = np.concatenate([labels if labels is not None else
                                         np.full(len(buffer), Viseme.NEUTRAL, np.uint8), fresh])
            buffer = np.concatenate([buffer, samples])
            whole = len(buffer) // CHUNK_SAMPLES
            pending.extend(_chunk(buffer, labels, i) for i in range(whole))
            buffer = buffer[whole * CHUNK_SAMPLES:]
            labels = labels[whole * CHUNK_SAMPLES:] if labels is not None else None
            if len(pending) > 1:
                if not self._hand_over(pending[:-1], segment, end=False):
                    return
                pending = pending[-1:]
        if cancelled():
            return
        if buffer.size:
            tail = np.zeros(CHUNK_SAMPLES - buffer.size, np.float32)
            rest = None if labels is None else np.concatenate([labels, np.full(tail.size, Viseme.REST, np.uint8)])
            pending.append(_chunk(np.concatenate([buffer, tail]), rest, 0))
        if segment.last:
            while not pending or (self._open_chunks + len(pending)) % self.engine.chunks_per_frame:
                pending.append((np.zeros(CHUNK_SAMPLES, np.float32), None))  # end on a whole video frame
        self._hand_over(pending, segment, end=segment.last)

    def _hand_over(self, chunks: list[tuple[np.ndarray, np.ndarray | None]], segment: Segment, end: bool) -> bool:
        """Queue chunks into the engine, the start event on the first, end on the last."""
        if segment.gate is not None and not self._passed(segment):
            return False
        if self._first_audio_s is not None and segment.backend is not None and self._on_first_audio is not None:
            self._on_first_audio(segment.backend.name, self._first_audio_s)
        self._first_audio_s = None
        for i, (samples, visemes) in enumerate(chunks):
            events: tuple[SpeechEvent, ...] = ()
            if self._start is not None:
                events, self._start = (self._start,), None
            if end and i == len(chunks) - 1:
                events += (SpeechEvent("end", segment.utterance_id, segment.utterance_text),)
                self._open = None
            if not self.engine.put_audio(AudioChunk(samples, True, segment.epoch, events, visemes)):
                return False
            self._open_chunks += 1
        return True

    def _passed(self, segment: Segment) -> bool:
        """Wait at a prepared reply's gate: True once released; False when dropped, interrupted or stopping."""
        assert segment.gate is not None
        cancelled = self._cancelled(segment.epoch)
        while (state := segment.gate.wait(GATE_POLL_S)) == HELD:
            if cancelled():
                return False
        return state != DROPPED and not cancelled()

    def _close_utterance(self, segment: Segment) -> None:
        """After a failure: skip the utterance's other sentences and end it if it had started."""
        skipped = self._segments.remove_if(lambda s: s.utterance_id == segment.utterance_id)
        self.budget.release(sum(s.audio_seconds for s in skipped))
        if self._open == segment.utterance_id and self._start is None:
            end = SpeechEvent("end", segment.utterance_id, segment.utterance_text)
            self.engine.put_audio(AudioChunk(np.zeros(CHUNK_SAMPLES, np.float32), False, segment.epoch, (end,)))
        self._open, self._start = None, None


def _chunk(samples: np.ndarray, labels: np.ndarray | None, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The index-th 20 ms chunk of `samples` and its viseme codes (one per 5 ms)."""
    part = slice(index * CHUNK_SAMPLES, (index + 1) * CHUNK_SAMPLES)
    return samples[part], None if labels is None else downsample_codes(labels[part])
