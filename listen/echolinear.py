"""A linear echo canceller for what the recogniser hears: the user's words over the avatar's echo, unsuppressed.

AEC3 (listen/echo.py) ends in a non-linear suppressor: right for the VAD (the echo must
not look like speech), wrong for recognition while both talk (it gates the user's first
words along with the echo). `LinearEcho` is a partitioned-block frequency-domain adaptive
filter (unconstrained MDF, 10 ms blocks, 40 ms of taps around the aligned delay) that only
subtracts its echo estimate; it adapts only while the caller says the block is echo alone
(AEC3 removed nearly all of it), so the user's voice never trains it away.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

PARTITIONS = 4  # x 10 ms: the filter spans 40 ms around the delay the canceller aligned
STEP = 0.4
POWER_SMOOTHING = 0.8
FLOOR = 1e-6


class LinearEcho:
    """One block of `block` samples at a time: `cancel(mic, ref, adapt)` -> mic minus the echo estimate."""

    def __init__(self, block: int, partitions: int = PARTITIONS):
        self.block = block
        bins = block + 1
        self._weights = np.zeros((partitions, bins), np.complex128)
        self._spectra = np.zeros((partitions, bins), np.complex128)  # newest first
        self._previous = np.zeros(block, np.float64)
        self._power = np.full(bins, FLOOR)
        self.adapted = 0

    def cancel(self, mic: np.ndarray, ref: np.ndarray, adapt: Callable[[np.ndarray], bool]) -> np.ndarray:
        """`adapt(error)` says, once the error is known, whether this block may train the filter."""
        n = self.block
        spectrum = np.fft.rfft(np.concatenate([self._previous, ref]))
        self._previous = ref.astype(np.float64)
        self._spectra = np.roll(self._spectra, 1, axis=0)
        self._spectra[0] = spectrum
        echo = np.fft.irfft(np.sum(self._weights * self._spectra, axis=0), 2 * n)[n:]
        error = mic - echo
        power = np.sum(np.abs(self._spectra) ** 2, axis=0)
        self._power = POWER_SMOOTHING * self._power + (1 - POWER_SMOOTHING) * power
        if adapt(error):
            self.adapted += 1
            error_spectrum = np.fft.rfft(np.concatenate([np.zeros(n), error]))
            gain = STEP * error_spectrum / (self._power + FLOOR * 2 * n)
            self._weights += np.conj(self._spectra) * gain
        return error.astype(np.float32)
