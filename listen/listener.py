"""One session's listening thread: uplink frames -> 16 kHz -> VAD -> turns (or live lips).

Runs on a daemon thread of its own (resampling and the VAD are CPU work), fed by
the `FrameBuffer` that the loop-side `UplinkReader` fills. Turn events go back to
the event loop through `on_turn`; in `lips` mode the audio goes straight to the
engine instead, as speech, keeping at most a few frames queued so the mouth and
the returned audio follow the user closely.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

import av
import numpy as np

from basereal import BaseReal
from listen.smartturn import TurnModel
from listen.transcript import Transcript
from listen.turns import TurnDetector, TurnEvent
from listen.uplink import FrameBuffer, MonoResampler, arrival_of
from listen.vad import WINDOW_SAMPLES, VADStream
from media import CHUNK_SAMPLES, AudioChunk

if TYPE_CHECKING:
    from listen.echo import EchoCanceller

logger = logging.getLogger(__name__)

POLL_S = 0.1
JOIN_TIMEOUT_S = 1.0
LIPS_MAX_QUEUED_CHUNKS = 15  # 300 ms of user audio may wait for the renderer (uplink jitter); older is dropped
LIPS_TARGET_CHUNKS = 2  # above this backlog, quiet chunks are skipped: latency drains in the user's pauses
LIPS_QUIET_RMS = 0.01
TEXT_VERDICTS_QUEUED = 4  # transcripts' verdicts waiting for the thread (one per pause at most)


class Listener:
    """Consumes one session's uplink audio on a named daemon thread; `close()` joins it."""

    def __init__(self, buffer: FrameBuffer, vad: VADStream, turns: TurnDetector, engine: BaseReal,
                 mode: Callable[[], str], on_turn: Callable[[TurnEvent], None], name: str,
                 turn_model: TurnModel | None = None, echo: "EchoCanceller | None" = None):
        self._buffer = buffer
        self._vad = vad
        self._turns = turns
        self._engine = engine
        self._mode = mode
        self._on_turn = on_turn
        self.echo = echo  # removes the avatar's own voice from the uplink, before everything else
        self._turn_model = turn_model  # judges each first pause when the detector is smart
        self.resample = MonoResampler()
        self._pending = np.zeros(0, np.float32)  # < one VAD window (or one lips chunk) of leftover audio
        self._pending_asr = np.zeros(0, np.float32)  # the same audio for recognition (differs only with `echo`)
        self._texts: queue.Queue[tuple[int, Transcript | None]] = queue.Queue(maxsize=TEXT_VERDICTS_QUEUED)
        self._reset = threading.Event()
        self._stopping = threading.Event()
        self.lips_dropped = 0
        self.lips_skipped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Forget any turn in progress (the mode changed); done on the thread, between frames."""
        self._reset.set()

    def judge_text(self, pause: int, transcript: Transcript | None) -> None:
        """From the loop: the speculative transcript of pause number `pause` is back (see TurnDetector)."""
        try:
            self._texts.put_nowait((pause, transcript))
        except queue.Full:
            logger.warning("listener %s: a transcript's verdict was dropped", self._thread.name)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # one bad frame must not end listening for the rest of the session
                logger.exception("listener %s: frame dropped", threading.current_thread().name)
                self._pending = self._pending_asr = np.zeros(0, np.float32)

    def _step(self) -> None:
        """Take one uplink frame (or time out) and run it through the current mode."""
        frame = self._buffer.get(POLL_S)
        if self._reset.is_set():
            self._reset.clear()
            self._turns.reset()
            self._vad.reset()
            self._pending = self._pending_asr = np.zeros(0, np.float32)
        while True:
            try:
                pause, transcript = self._texts.get_nowait()
            except queue.Empty:
                break
            logger.debug("listener %s: pause %d transcript %s", self._thread.name, pause, transcript)
            for event in self._turns.text_verdict(pause, transcript):
                self._on_turn(event)
        if frame is None:
            return
        mode = self._mode()
        if mode == "off":
            return
        try:
            samples = self.resample(frame)
        except (ValueError, av.error.FFmpegError) as exc:
            logger.warning("uplink frame could not be resampled (%s): dropped", exc)
            return
        for_asr = samples
        if self.echo is not None and mode != "lips":  # lips plays the user back: not the avatar's own voice
            # the VAD hears the canceller's output, recognition the echo subtracted but not suppressed
            samples = self.echo.process(samples, arrival_of(frame))
            for_asr = self.echo.for_asr
        self._pending = np.concatenate([self._pending, samples])
        self._pending_asr = np.concatenate([self._pending_asr, for_asr])
        if mode == "lips":
            self._feed_lips()
        else:
            self._detect_turns()

    def _detect_turns(self) -> None:
        count = len(self._pending) // WINDOW_SAMPLES
        for i in range(count):
            part = slice(i * WINDOW_SAMPLES, (i + 1) * WINDOW_SAMPLES)
            for event in self._turns.push(self._pending_asr[part], self._vad(self._pending[part])):
                self._on_turn(event)
            if self._turn_model is not None and self._turns.awaiting_verdict:
                started = time.perf_counter()
                probability = self._turn_model.probability(self._turns.heard())
                logger.debug("listener %s: turn model %.2f in %.0f ms", self._thread.name, probability,
                             1000 * (time.perf_counter() - started))
                for event in self._turns.verdict(probability):
                    self._on_turn(event)
        self._pending = self._pending[count * WINDOW_SAMPLES:].copy()
        self._pending_asr = self._pending_asr[count * WINDOW_SAMPLES:].copy()

    def _feed_lips(self) -> None:
        count = len(self._pending) // CHUNK_SAMPLES
        engine = self._engine
        for i in range(count):
            samples = self._pending[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES].copy()
            voiced = float(np.sqrt(np.mean(samples ** 2))) >= LIPS_QUIET_RMS
            if not voiced and engine.audio_in.qsize() + len(self._buffer) > LIPS_TARGET_CHUNKS:
                self.lips_skipped += 1
                continue
            # Quiet audio is not speech to the engine: it renders idle just in time, and the next
            # voiced chunk jumps the idle frames queued ahead of it.
            chunk = AudioChunk(samples, speech=voiced, epoch=engine.epoch)
            while engine.audio_in.qsize() >= LIPS_MAX_QUEUED_CHUNKS:
                try:
                    engine.audio_in.get_nowait()  # the renderer fell behind: the oldest audio goes, latency stays bounded
                    self.lips_dropped += 1
                except queue.Empty:
                    break
            try:
                engine.audio_in.put_nowait(chunk)
            except queue.Full:
                self.lips_dropped += 1
        self._pending = self._pending[count * CHUNK_SAMPLES:].copy()
        self._pending_asr = self._pending_asr[count * CHUNK_SAMPLES:].copy()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.error("listener thread %s did not stop within %.1f s", self._thread.name, JOIN_TIMEOUT_S)

