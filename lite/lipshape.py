"""Speech -> mouth shape per video frame for the lite engine.

A frame's target is a blend of viseme targets (visemes.SHAPES), weighted by
how much of the frame each viseme fills, mixed with the next frame's
(anticipation: lips round and close before the sound). The viseme weights come
from the chunks' phoneme labels when the TTS gave them (espeak: exact timing),
otherwise from an audio-only estimate (visemeaudio.py). Loudness, measured
against an adaptive speech level, scales how far the jaw and lips open, so
quiet and loud voices both use the whole range; closures and rounding do not
depend on loudness. Each shape parameter then follows its target like a
critically damped spring (a jaw has mass: it never jumps, never overshoots,
never jitters), so an utterance's end closes the mouth softly. Loudness well
above the speech level (a stressed, emphasised syllable) lifts the brows and
dips the head a little on a slower spring; silence never moves them.
"""

from __future__ import annotations

import numpy as np

from media import AudioChunk
from speech.visemes import SHAPE_TABLE, VISEME_COUNT, MouthShape, Viseme

SPEECH_RANGE_DB = 26.0  # loudness below (speech level - this) keeps the mouth closed
INITIAL_LEVEL_DB = -18.0
LEVEL_RISE, LEVEL_FALL = 0.15, 0.02  # adaptive speech level: quick up, slow down
SILENCE_DB = -70.0
ANTICIPATION = 0.6  # share of the next frame's visemes in this frame's target (the springs lag ~a frame)
AHEAD_LOUDNESS = 0.6  # the next frame's loudness counts this much towards this frame's opening
PRESS_ANTICIPATION = 0.15  # lips close on time, not a frame early (that would swallow short vowels)
OPEN_FLOOR, OPEN_GAIN = 0.05, 1.0  # opening = viseme opening * (floor + gain * loudness)
LOUDNESS_GAIN = 1.3  # amplitude relative to the speech level -> opening (the jaw follows amplitude)
CLOSURE_GAIN = 1.8  # a closure filling a little over half the frame presses the lips fully
LABIODENTAL_PRESS = 0.7
PAUSE_PRESS = 0.5  # in pauses and quiet moments inside speech the lips come lightly together
QUIET_LOUDNESS = 0.6  # below this loudness a speech frame counts as (partly) quiet
STIFFNESS = np.array([60.0, 60.0, 22.0, 55.0])  # spring rate (rad/s) of jaw, lips, width, press
RELEASE_STIFFNESS = np.array([60.0, 60.0, 22.0, 110.0])  # towards a lower goal: a plosive release is quick
CLOSED_EPS = 0.02
EMPHASIS_FROM, EMPHASIS_SPAN = 0.95, 0.2  # loudness above the usual speech level raises the brows
BROW_STIFFNESS = 14.0  # brows rise slowly with a stressed syllable...
BROW_RELEASE = 35.0  # ...and settle with the mouth when the voice drops


def db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return SILENCE_DB
    return float(10.0 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-12))


def viseme_weights(codes: np.ndarray) -> np.ndarray:
    """Share of each viseme class among a frame's codes."""
    return np.bincount(codes, minlength=VISEME_COUNT)[:VISEME_COUNT] / max(len(codes), 1)


class CriticalSpring:
    """Critically damped second-order follower, integrated exactly per step; it may
    move towards a lower goal at another rate (lips part at a release faster than they close)."""

    def __init__(self, rates: np.ndarray, dt: float, falling: np.ndarray | None = None):
        self.rising = rates
        self.falling = rates if falling is None else falling
        self.dt = dt
        self.position = np.zeros_like(rates)
        self.velocity = np.zeros_like(rates)

    def reset(self) -> None:
        self.position[:] = 0.0
        self.velocity[:] = 0.0

    def step(self, goal: np.ndarray) -> np.ndarray:
        w, t = np.where(goal < self.position, self.falling, self.rising), self.dt
        error = self.position - goal
        b = self.velocity + w * error
        decay = np.exp(-w * t)
        self.position = goal + (error + b * t) * decay
        self.velocity = (self.velocity - w * b * t) * decay
        return self.position

    @property
    def at_rest(self) -> bool:
        return bool(np.all(np.abs(self.position) < CLOSED_EPS) and np.all(np.abs(self.velocity) * self.dt < CLOSED_EPS))


class MouthShaper:
    """Stateful per session: call `shape` once per video frame, in order.

    `estimator` gives viseme weights for audio without phoneme labels
    (callable: 16 kHz samples of the frame plus its lookahead -> weights);
    frames of unlabelled audio use it, labelled frames never do.
    """

    def __init__(self, estimator, fps: int = 25):
        self.estimator = estimator
        self.level_db = INITIAL_LEVEL_DB
        self.spring = CriticalSpring(STIFFNESS.copy(), 1.0 / fps, RELEASE_STIFFNESS.copy())
        self.brow_spring = CriticalSpring(np.array([BROW_STIFFNESS]), 1.0 / fps, np.array([BROW_RELEASE]))
        self._emphasis = 0.0

    def reset(self) -> None:
        self.spring.reset()
        self.brow_spring.reset()

    def _loudness(self, level: float, speech: bool) -> float:
        if speech and level > self.level_db - SPEECH_RANGE_DB:
            rate = LEVEL_RISE if level > self.level_db else LEVEL_FALL
            self.level_db += rate * (level - self.level_db)
        if level < self.level_db - SPEECH_RANGE_DB:
            return 0.0
        return float(np.clip(LOUDNESS_GAIN * 10.0 ** ((level - self.level_db) / 20.0), 0.0, 1.15))

    def _weights(self, chunks: list[AudioChunk], estimate: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Viseme weights of some chunks, and the share of them that is a pause inside speech."""
        spoken = [c for c in chunks if c.speech]
        rest = np.eye(VISEME_COUNT)[Viseme.REST]
        if not spoken:
            return rest, 0.0
        in_speech = len(spoken) / len(chunks)
        if all(c.visemes is not None for c in spoken):
            weights = viseme_weights(np.concatenate([c.visemes for c in spoken]))
            return weights * in_speech + rest * (1 - in_speech), float(weights[Viseme.REST] * in_speech)
        if estimate is None:
            return rest, in_speech
        return estimate, 0.0

    def target(self, current: list[AudioChunk], ahead: list[AudioChunk]) -> np.ndarray:
        """The unsmoothed (jaw, lips, width, press) for one frame and the audio right after it."""
        now_audio = np.concatenate([c.samples for c in current])
        speech = any(c.speech for c in current)
        loud_now = self._loudness(db(now_audio), speech)
        ahead_audio = np.concatenate([c.samples for c in ahead]) if ahead else np.zeros(0, np.float32)
        loud_ahead = self._loudness(db(ahead_audio), False) if ahead else 0.0
        estimate = None
        if speech and any(c.visemes is None for c in current if c.speech):
            # The estimate already looks at the next frame: it stands for this frame and the next.
            estimate = self.estimator(np.concatenate([now_audio, ahead_audio]))
            if loud_now <= 0.0 and loud_ahead <= 0.0:
                estimate = None
        now, pause = self._weights(current, estimate)
        later = self._weights(ahead, estimate)[0] if ahead else np.eye(VISEME_COUNT)[Viseme.REST]
        weights = (1 - ANTICIPATION) * now + ANTICIPATION * later
        goal = weights @ SHAPE_TABLE
        loud = max(loud_now, AHEAD_LOUDNESS * loud_ahead)
        opening = min(OPEN_FLOOR + OPEN_GAIN * loud, 1.1) if loud > 0 or weights[Viseme.REST] < 1 else 0.0
        goal[:2] *= opening
        closing = (1 - PRESS_ANTICIPATION) * now + PRESS_ANTICIPATION * later
        self._emphasis = float(np.clip((loud_now - EMPHASIS_FROM) / EMPHASIS_SPAN, 0.0, 1.0)) if speech else 0.0
        quiet = max(0.0, 1.0 - loud_now / QUIET_LOUDNESS) if speech else 0.0
        relaxed = pause + (1.0 - pause) * quiet
        closure = closing[Viseme.CLOSED] + LABIODENTAL_PRESS * closing[Viseme.LABIODENTAL] + PAUSE_PRESS * relaxed
        goal[3] = min(1.0, CLOSURE_GAIN * closure)
        return goal

    def shape(self, current: list[AudioChunk], ahead: list[AudioChunk]) -> MouthShape:
        """The smoothed shape for the next frame; MouthShape() (exactly closed) once at rest."""
        goal = self.target(current, ahead)
        state = self.spring.step(goal)
        brow = float(self.brow_spring.step(np.array([self._emphasis]))[0])
        if not np.any(goal) and not self._emphasis and self.spring.at_rest and self.brow_spring.at_rest:
            self.reset()
            return MouthShape()
        jaw, lips, width, press = state
        return MouthShape(float(np.clip(jaw, 0, 1)), float(np.clip(lips, 0, 1)), float(np.clip(width, -1, 1)),
                          float(np.clip(press, 0, 1)), float(np.clip(brow, 0, 1)))
