"""How late the avatar's own voice comes back in the microphone: GCC-PHAT over a sliding window.

`gcc_phat(mic, ref, max_lag)` finds the lag at which the reference (the audio the
session handed to WebRTC) best explains the microphone, with the spectrum whitened
(PHAT) so that speech's strong low harmonics do not smear the peak. `DelayTracker`
turns a stream of such estimates into the delay the canceller uses: only estimates
with a clear peak count, and the delay moves only when several of them agree, so a
single wrong peak (double talk, a quiet stretch) never throws the alignment off,
while a real drift (a jitter buffer growing) is followed within a second or two.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from media import SAMPLE_RATE

BAND_HZ = (200.0, 4000.0)  # the speech band: outside it the PHAT weights mostly whiten noise
MIN_PEAK_RATIO = 2.0  # the peak over the next-highest one (5 ms away or more) below which an estimate is not trusted
EXCLUDE_MS = 5.0  # around the peak: the next-highest peak is searched outside this


@dataclass(frozen=True)
class LagEstimate:
    lag: int  # samples: the microphone lags the reference by this much
    confidence: float  # the peak over the highest other peak: ~1 for unrelated audio, 10+ for a clean echo


def gcc_phat(mic: np.ndarray, ref: np.ndarray, max_lag: int, rate: int = SAMPLE_RATE) -> LagEstimate:
    """The lag L in [0, max_lag] maximising sum mic[n] * ref[n + max_lag - L].

    `mic` holds N samples; `ref` holds the N + max_lag reference samples that end at the
    same instant as `mic` (so ref[max_lag:] is simultaneous with mic).
    """
    n = len(mic)
    if len(ref) != n + max_lag:
        raise ValueError(f"ref must hold len(mic) + max_lag = {n + max_lag} samples, not {len(ref)}")
    size = 1 << int(np.ceil(np.log2(n + len(ref))))
    spec_mic = np.fft.rfft(mic, size)
    spec_ref = np.fft.rfft(ref, size)
    cross = spec_mic * np.conj(spec_ref)
    cross /= np.abs(cross) + 1e-12
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    cross[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0.0
    corr = np.fft.irfft(cross, size)
    # corr[k] = sum mic[n] ref[n - k]; mic[n] matches ref[n + max_lag - L]  ->  k = L - max_lag <= 0
    lags = np.concatenate([corr[size - max_lag:], corr[:1]])  # k = -max_lag .. 0, i.e. L = 0 .. max_lag
    peak = int(np.argmax(lags))
    exclude = int(rate * EXCLUDE_MS / 1000)
    others = np.concatenate([lags[:max(0, peak - exclude)], lags[peak + exclude + 1:]])
    runner_up = float(np.max(others)) if len(others) else 0.0
    if lags[peak] <= 0:
        return LagEstimate(peak, 0.0)
    return LagEstimate(peak, float(lags[peak]) / max(runner_up, 1e-3 * float(lags[peak])))


class DelayTracker:
    """The delay in use: moves to a new value once `agree` recent trusted estimates sit within `tolerance`."""

    def __init__(self, agree: int = 3, tolerance: int = SAMPLE_RATE * 4 // 1000, min_ratio: float = MIN_PEAK_RATIO):
        self.agree = agree
        self.tolerance = tolerance
        self.min_ratio = min_ratio
        self._recent: deque[int] = deque(maxlen=agree)
        self.delay: int | None = None  # samples; None until the first agreement
        self.estimates = 0
        self.trusted = 0
        self.moves = 0

    def update(self, estimate: LagEstimate) -> bool:
        """Feed one estimate; True when the delay in use changed."""
        self.estimates += 1
        if estimate.confidence < self.min_ratio:
            return False
        self.trusted += 1
        self._recent.append(estimate.lag)
        if len(self._recent) < self.agree:
            return False
        values = sorted(self._recent)
        if values[-1] - values[0] > self.tolerance:
            return False
        median = values[len(values) // 2]
        if self.delay is not None and abs(median - self.delay) <= self.tolerance:
            return False
        self.delay = median
        self.moves += 1
        return True
