"""Silero VAD (the ONNX model inside the `silero-vad` wheel) run with onnxruntime.

onnxruntime rather than torch: one 32 ms window costs ~0.1 ms with ORT and
~0.6 ms with the wheel's TorchScript model on the same core (measured, see
BENCHMARKS.md "Listening"), and ORT keeps no per-thread torch state.
The model (`SileroModel`) is loaded once per process and shared; each session
has a `VADStream` holding its recurrent state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from media import SAMPLE_RATE

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz: 32 ms
WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE
CONTEXT_SAMPLES = 64  # the tail of the previous window the model sees with each new one
STATE_SHAPE = (2, 1, 128)


class VADError(Exception):
    pass


def model_path() -> Path:
    try:
        import silero_vad
    except ImportError:
        raise VADError("listening needs the silero-vad package: pip install -r requirements.txt") from None
    path = Path(silero_vad.__file__).resolve().parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VADError(f"silero-vad is installed but {path} is missing: reinstall silero-vad")
    return path


class SileroModel:
    """The process-wide ONNX session; `run` is thread-safe (state is passed in and out)."""

    def __init__(self, path: Path | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path or model_path()), sess_options=options, providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        prob, state = self._session.run(None, {"input": window, "state": state, "sr": self._rate})
        return float(prob[0][0]), state


class VADStream:
    """Speech probability per 32 ms window of one session's 16 kHz audio."""

    def __init__(self, model: SileroModel):
        self._model = model
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)

    def __call__(self, window: np.ndarray) -> float:
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"VAD windows are {WINDOW_SAMPLES} samples, got {window.shape}")
        x = np.concatenate([self._context, window.astype(np.float32, copy=False)[None]], axis=1)
        prob, self._state = self._model.run(x, self._state)
        self._context = x[:, -CONTEXT_SAMPLES:]
        return prob

    def reset(self) -> None:
        self._state[:] = 0
        self._context[:] = 0
