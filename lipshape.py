"""Audio -> mouth shape for the lite engine: loudness plus a few spectral cues.

Per video frame the shaper looks at that frame's 20 ms chunks and the next
queued chunk (lookahead, so the mouth starts to open with the sound, not
after it). Loudness is measured against an adaptive speech level, so quiet and
loud voices both use the whole range. Band energies tell open vowels (strong
first formant), spread vowels (strong high second formant), rounded vowels
(energy below ~1.6 kHz only), fricatives (energy above 3.5 kHz) and nasal
closures (murmur below 350 Hz only). The result is smoothed with a fast
attack and a slower release, as real jaws move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from media import SAMPLE_RATE

FFT_SIZE = 1024
BANDS_HZ = {"low": (80, 350), "f1": (350, 900), "f2lo": (900, 1600), "f2hi": (1600, 3200), "hf": (3500, 7500)}
SPEECH_RANGE_DB = 26.0  # loudness below (speech level - this) keeps the mouth closed
INITIAL_LEVEL_DB = -18.0
LEVEL_RISE, LEVEL_FALL = 0.15, 0.02  # adaptive speech level: quick up, slow down
ATTACK, RELEASE = 0.8, 0.45  # fraction of the way to the target per frame (jaw and lips)
WIDTH_RATE = 0.5
CLOSED_EPS = 0.02
SILENCE_DB = -70.0


@dataclass(frozen=True)
class MouthShape:
    """jaw 0..1 (closed..wide open), lips 0..1 (extra lip parting), width -1..1 (rounded..spread)."""

    jaw: float = 0.0
    lips: float = 0.0
    width: float = 0.0

    @property
    def closed(self) -> bool:
        return self.jaw < CLOSED_EPS and self.lips < CLOSED_EPS and abs(self.width) < CLOSED_EPS


def _db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return SILENCE_DB
    return float(10.0 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-12))


class MouthShaper:
    """Stateful per session: call `shape` once per video frame, in order."""

    def __init__(self) -> None:
        window = np.hanning(FFT_SIZE).astype(np.float32)
        self._window = window
        freqs = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE)
        self._bands = {name: (freqs >= lo) & (freqs < hi) for name, (lo, hi) in BANDS_HZ.items()}
        self.level_db = INITIAL_LEVEL_DB
        self._state = np.zeros(3, np.float64)  # jaw, lips, width

    def reset(self) -> None:
        self._state[:] = 0.0

    def _band_shares(self, samples: np.ndarray) -> dict[str, float]:
        frame = np.zeros(FFT_SIZE, np.float32)
        frame[: min(FFT_SIZE, samples.size)] = samples[-FFT_SIZE:]
        power = np.abs(np.fft.rfft(frame * self._window)) ** 2
        energy = {name: float(power[mask].sum()) + 1e-12 for name, mask in self._bands.items()}
        total = sum(energy.values())
        return {name: value / total for name, value in energy.items()}

    def _loudness(self, db: float, speech: bool) -> float:
        if speech and db > self.level_db - SPEECH_RANGE_DB:
            rate = LEVEL_RISE if db > self.level_db else LEVEL_FALL
            self.level_db += rate * (db - self.level_db)
        return float(np.clip((db - (self.level_db - SPEECH_RANGE_DB)) / SPEECH_RANGE_DB, 0.0, 1.15))

    def target(self, current: np.ndarray, lookahead: np.ndarray, speech: bool) -> MouthShape:
        """The unsmoothed shape for one frame's audio (plus the audio right after it)."""
        now = self._loudness(_db(current), speech)
        ahead = self._loudness(_db(lookahead), False) if lookahead.size else 0.0
        loud = max(now, 0.6 * ahead) ** 1.2
        if loud <= 0.0:
            return MouthShape()
        share = self._band_shares(np.concatenate([current, lookahead]))
        voiced = share["low"] + share["f1"] + share["f2lo"] + share["f2hi"]
        openness = np.clip((share["f1"] / (share["low"] + share["f1"]) - 0.25) / 0.5, 0.0, 1.0)
        spread = np.clip((share["f2hi"] / max(voiced - share["low"], 1e-6) - 0.25) / 0.4, 0.0, 1.0)
        rounded = np.clip((share["f2lo"] / (share["f2lo"] + share["f2hi"]) - 0.35) / 0.4, 0.0, 1.0) * (1 - spread)
        fricative = np.clip((share["hf"] - 0.15) / 0.35, 0.0, 1.0)
        nasal = np.clip((share["low"] - 0.6) / 0.3, 0.0, 1.0) * (1.0 - spread)
        jaw = loud * (0.3 + 0.55 * openness) * (1.0 - 0.75 * nasal) * (1.0 - 0.55 * fricative)
        lips = loud * (0.3 + 0.4 * fricative + 0.2 * spread) * (1.0 - nasal)
        width = (0.9 * spread - rounded) * min(1.0, 2.0 * loud)
        return MouthShape(float(np.clip(jaw, 0, 1)), float(np.clip(lips, 0, 1)), float(np.clip(width, -1, 1)))

    def shape(self, current: np.ndarray, lookahead: np.ndarray, speech: bool) -> MouthShape:
        """The smoothed shape for the next frame."""
        goal = self.target(current, lookahead, speech)
        state = self._state
        for i, value in enumerate((goal.jaw, goal.lips)):
            rate = ATTACK if value > state[i] else RELEASE
            state[i] += rate * (value - state[i])
        state[2] += WIDTH_RATE * (goal.width - state[2])
        result = MouthShape(float(state[0]), float(state[1]), float(state[2]))
        if result.closed and goal.jaw == 0.0:
            self.reset()
            return MouthShape()
        return result
