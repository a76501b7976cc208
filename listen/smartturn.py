"""The end-of-turn model: pipecat's Smart Turn v3.2 (the ONNX file inside the `pipecat-ai` wheel).

At a short pause of the user's turn the listener thread asks `TurnModel.complete(audio)`
whether the user has finished, judged from the audio itself (intonation, the last words),
not from the silence. pipecat's `LocalSmartTurnAnalyzerV3` does the work: it finds its
bundled model, builds the onnxruntime session and computes the Whisper log-mel features
with its own numpy code. Its public interface is asyncio (`analyze_end_of_turn`, with a
thread pool and a per-stream audio buffer of its own); we already run on a thread of ours
with the turn's audio in hand, so we call its synchronous `_predict_endpoint` (a private
method: re-check it when upgrading pipecat-ai, pinned in requirements.txt).
The model is loaded once per process (ListenService); onnxruntime's `run` is thread-safe,
so every session's listener shares it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from listen.turns import AUDIO_COMPLETE_PROBABILITY
from media import SAMPLE_RATE

logger = logging.getLogger(__name__)

MODEL_THREADS = 1  # one core per call: ~50 ms for 8 s of audio on this 2-core machine
MODEL_MAX_AUDIO_S = 8  # the model sees the newest 8 s (left-padded with silence when shorter)
MODEL_FILE = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"  # inside the pipecat package


class TurnModelError(Exception):
    """The turn model cannot be loaded; the message says what to do."""


def installed() -> bool:
    """Whether pipecat-ai and its Smart Turn model file are installed (found without importing pipecat)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(folder) / MODEL_FILE).is_file() for folder in spec.submodule_search_locations)


class TurnModel:
    """Smart Turn v3.2 through pipecat's analyzer; `complete` runs on the caller's thread."""

    def __init__(self) -> None:
        try:
            from loguru import logger as loguru_logger

            loguru_logger.disable("pipecat")  # pipecat logs through loguru to stderr; our log is the logging module's
            from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
        except ImportError as exc:
            raise TurnModelError(f"--turn smart needs pipecat-ai ({exc}): pip install -r requirements.txt, "
                                 "or pass --turn silence") from None
        started = time.perf_counter()
        self._analyzer = LocalSmartTurnAnalyzerV3(sample_rate=SAMPLE_RATE, cpu_count=MODEL_THREADS)
        self.probability(np.zeros(SAMPLE_RATE, np.float32))  # onnxruntime's first run is slow: not at a user's pause
        logger.info("turn model: Smart Turn v3.2 loaded in %.0f ms", 1000 * (time.perf_counter() - started))

    def probability(self, audio: np.ndarray) -> float:
        """P(the user has finished) for 16 kHz mono float32 audio ending now (silence included)."""
        result = self._analyzer._predict_endpoint(audio[-MODEL_MAX_AUDIO_S * SAMPLE_RATE:])  # private: see above
        return float(result["probability"])

    def complete(self, audio: np.ndarray) -> bool:
        return self.probability(audio) > AUDIO_COMPLETE_PROBABILITY
