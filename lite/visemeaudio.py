"""Visemes from audio alone, for speech whose phonemes nobody told us.

Uploads, edge-tts, OpenAI-compatible TTS and the user's live voice come
without phoneme events. `AudioVisemes` estimates a frame's viseme weights
from its sound: mel-cepstra of the frame's two 20 ms chunks and of the next
frame's two (the lips move before the sound they shape), with the cepstral
mean and the speech level tracked per session (so a voice or a microphone is
normalised away as it is heard), fed to a small two-layer network.

The network is trained here (tools/train_visemes.py) on espeak-ng speech
labelled by espeak's own phoneme events, in several voices and rates; its
weights ship as assets/viseme_mlp.npz (a few kB of numpy arrays, no torch at
run time). Without that file, `SpectralVisemes` guesses from band energies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from media import CHUNK_SAMPLES, SAMPLE_RATE
from speech.visemes import VISEME_COUNT, Viseme

MODEL_PATH = Path(__file__).resolve().parents[1] / "assets" / "viseme_mlp.npz"
WINDOW = 512  # 32 ms analysis window centred on each 20 ms chunk
MEL_BANDS = 26
CEPSTRA = 12  # c1..c12 (c0, the level, enters as the level above the speech floor)
CONTEXT_CHUNKS = 4  # this frame's two chunks and the next frame's two
FEATURES = CONTEXT_CHUNKS * (CEPSTRA + 1)
MEAN_RATE = 0.02  # running cepstral mean: about a second of speech
LEVEL_RISE, LEVEL_FALL = 0.2, 0.01
SILENT_LOG_ENERGY = -9.0
FFT_SIZE = 1024
SHARPEN = 2.0  # the network hedges between neighbours; a mouth shows the likeliest shape more clearly
BANDS_HZ = {"low": (80, 350), "f1": (350, 900), "f2lo": (900, 1600), "f2hi": (1600, 3200), "hf": (3500, 7500)}


def mel_filters(bands: int = MEL_BANDS, size: int = WINDOW, low: float = 80.0, high: float = 7600.0) -> np.ndarray:
    """(bands, size // 2 + 1) triangular mel filterbank."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(low), mel(high), bands + 2))
    freqs = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    filters = np.zeros((bands, freqs.size), np.float32)
    for i in range(bands):
        left, centre, right = edges[i : i + 3]
        rising = (freqs - left) / (centre - left)
        falling = (right - freqs) / (right - centre)
        filters[i] = np.clip(np.minimum(rising, falling), 0.0, None)
    return filters


def dct_matrix(count: int = CEPSTRA + 1, bands: int = MEL_BANDS) -> np.ndarray:
    n = np.arange(bands)
    return np.cos(np.pi / bands * (n[None, :] + 0.5) * np.arange(count)[:, None]).astype(np.float32)


class CepstralStream:
    """Per-session features of each frame: normalised cepstra of 4 chunk-centred windows."""

    def __init__(self) -> None:
        self._window = np.hanning(WINDOW).astype(np.float32)
        self._mel = mel_filters()
        self._dct = dct_matrix()
        self.mean = np.zeros(CEPSTRA, np.float32)
        self.level = SILENT_LOG_ENERGY + 4.0
        self._warm = False

    def cepstra(self, samples: np.ndarray) -> np.ndarray:
        """(CONTEXT_CHUNKS, CEPSTRA + 1) raw cepstra (c0..c12) around each chunk of `samples`."""
        total = CONTEXT_CHUNKS * CHUNK_SAMPLES
        padded = np.zeros(total + WINDOW, np.float32)
        offset = WINDOW // 2 - CHUNK_SAMPLES // 2
        padded[offset : offset + min(samples.size, total)] = samples[:total]
        starts = np.arange(CONTEXT_CHUNKS) * CHUNK_SAMPLES
        frames = np.stack([padded[s : s + WINDOW] for s in starts]) * self._window
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        log_mel = np.log(power @ self._mel.T + 1e-8)
        return (log_mel @ self._dct.T) / MEL_BANDS

    def features(self, samples: np.ndarray) -> np.ndarray:
        """The network's input for one frame (+ lookahead); updates the running normalisation."""
        raw = self.cepstra(samples)
        energy, cepstra = raw[:, 0], raw[:, 1:]
        loudest = float(energy[:2].max())
        if loudest > self.level - 4.0:  # speech: track the voice's level and timbre
            rate = LEVEL_RISE if loudest > self.level else LEVEL_FALL
            self.level += rate * (loudest - self.level)
            if not self._warm:
                self.mean[:], self._warm = cepstra[:2].mean(0), True
            else:
                self.mean += MEAN_RATE * (cepstra[:2].mean(0) - self.mean)
        relative = np.clip(energy - self.level, -8.0, 2.0)
        return np.concatenate([cepstra - self.mean, relative[:, None]], axis=1).reshape(-1).astype(np.float32)


class VisemeNetwork:
    """The trained two-layer network (numpy): features -> viseme probabilities."""

    def __init__(self, path: Path = MODEL_PATH):
        with np.load(path) as data:
            self.scale_mean = data["feature_mean"]
            self.scale_std = data["feature_std"]
            self.w1, self.b1 = data["w1"], data["b1"]
            self.w2, self.b2 = data["w2"], data["b2"]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = (features - self.scale_mean) / self.scale_std
        hidden = np.tanh(x @ self.w1 + self.b1)
        logits = hidden @ self.w2 + self.b2
        logits = logits - logits.max(axis=-1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=-1, keepdims=True)


class AudioVisemes:
    """Per session: a frame's samples (plus the next frame's) -> viseme weights."""

    def __init__(self, network: VisemeNetwork):
        self.network = network
        self.stream = CepstralStream()

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        odds = self.network(self.stream.features(samples)) ** SHARPEN
        return odds / odds.sum()


class SpectralVisemes:
    """Band-energy rules -> viseme weights: a strong first formant is an open vowel, a
    strong high second formant a spread one, energy only below ~1.6 kHz a rounded one,
    noise above 3.5 kHz a fricative and a low murmur alone a nasal closure."""

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


def audio_estimator(network: VisemeNetwork | None):
    """A fresh per-session estimator: the trained network when there is one."""
    return AudioVisemes(network) if network is not None else SpectralVisemes()
