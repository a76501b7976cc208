"""Visemes from audio alone, for speech whose phonemes nobody told us.

Uploads, edge-tts, OpenAI-compatible TTS and the user's live voice come
without phoneme events. `SpectralVisemes` guesses the viseme weights of a
frame from a few band energies: a strong first formant is an open vowel, a
strong high second formant a spread one, energy only below ~1.6 kHz a rounded
one, noise above 3.5 kHz a fricative and a low murmur alone a nasal closure.
"""

from __future__ import annotations

import numpy as np

from media import SAMPLE_RATE
from visemes import VISEME_COUNT, Viseme

FFT_SIZE = 1024
BANDS_HZ = {"low": (80, 350), "f1": (350, 900), "f2lo": (900, 1600), "f2hi": (1600, 3200), "hf": (3500, 7500)}


class SpectralVisemes:
    """Band-energy rules -> viseme weights (callable on a frame's samples)."""

    def __init__(self) -> None:
        self._window = np.hanning(FFT_SIZE).astype(np.float32)
        freqs = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE)
        self._bands = {name: (freqs >= lo) & (freqs < hi) for name, (lo, hi) in BANDS_HZ.items()}

    def _band_shares(self, samples: np.ndarray) -> dict[str, float]:
        frame = np.zeros(FFT_SIZE, np.float32)
        frame[: min(FFT_SIZE, samples.size)] = samples[:FFT_SIZE]
        power = np.abs(np.fft.rfft(frame * self._window)) ** 2
        energy = {name: float(power[mask].sum()) + 1e-12 for name, mask in self._bands.items()}
        total = sum(energy.values())
        return {name: value / total for name, value in energy.items()}

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        share = self._band_shares(samples)
        voiced = share["low"] + share["f1"] + share["f2lo"] + share["f2hi"]
        openness = np.clip((share["f1"] / (share["low"] + share["f1"]) - 0.25) / 0.5, 0.0, 1.0)
        spread = np.clip((share["f2hi"] / max(voiced - share["low"], 1e-6) - 0.25) / 0.4, 0.0, 1.0)
        rounded = np.clip((share["f2lo"] / (share["f2lo"] + share["f2hi"]) - 0.35) / 0.4, 0.0, 1.0) * (1 - spread)
        fricative = np.clip((share["hf"] - 0.15) / 0.35, 0.0, 1.0)
        nasal = np.clip((share["low"] - 0.6) / 0.3, 0.0, 1.0) * (1.0 - spread)
        weights = np.zeros(VISEME_COUNT)
        weights[Viseme.OPEN] = openness
        weights[Viseme.SPREAD] = spread + 0.5 * fricative
        weights[Viseme.ROUNDED] = rounded
        weights[Viseme.CLOSED] = nasal
        weights[Viseme.NEUTRAL] = 0.4
        return weights / weights.sum()
