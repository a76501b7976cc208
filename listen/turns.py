"""Turn detection: speech probabilities per window -> the user's turns.

A turn starts once speech has lasted `min_speech_ms` (a cough or a click is
shorter and is forgotten), and ends after `end_silence_ms` of silence. The
audio of a turn (with a little audio from before its onset) is handed out at
its end, or in pieces of `max_utterance_s` when the user talks on and on, so
memory stays bounded however long the monologue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from listen.vad import WINDOW_MS

PRE_ROLL_MS = 256  # audio kept from before the onset, so the first phoneme is not clipped
NEGATIVE_MARGIN = 0.15  # hysteresis: speech continues until the probability falls this far below the threshold
ONSET_GAP_MS = 96  # a dip this long before the onset is confirmed drops the candidate
EARLY_SILENCE_MS = 160  # silence after which the turn's audio is offered for a speculative transcription


@dataclass(frozen=True)
class TurnEvent:
    """start; pause (audio: the turn so far, the same audio "end" will carry unless the user
    resumes); resume (the pause was not the end); end and cut (audio: the utterance)."""

    kind: str  # "start" | "pause" | "resume" | "end" | "cut"
    audio: np.ndarray | None = None


class TurnDetector:
    """Pure state machine fed one window (audio + speech probability) at a time."""

    def __init__(self, threshold: float, min_speech_ms: int, end_silence_ms: int, max_utterance_s: float):
        self.threshold = threshold
        self.negative = max(threshold - NEGATIVE_MARGIN, 0.01)
        self.min_windows = max(1, -(-min_speech_ms // WINDOW_MS))
        self.end_windows = max(1, -(-end_silence_ms // WINDOW_MS))
        self.max_windows = int(max_utterance_s * 1000 // WINDOW_MS)
        self.gap_windows = max(1, ONSET_GAP_MS // WINDOW_MS)
        early = max(1, EARLY_SILENCE_MS // WINDOW_MS)
        self.early_windows = early if early < self.end_windows else None  # no pause when the end comes as soon
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(1, PRE_ROLL_MS // WINDOW_MS))
        self._candidate: list[np.ndarray] = []
        self._candidate_speech = 0
        self._candidate_gap = 0
        self._utterance: list[np.ndarray] = []
        self._silence = 0
        self.in_turn = False

    def push(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        if self.in_turn:
            return self._in_turn(window, prob)
        return self._waiting(window, prob)

    def _waiting(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        if prob >= self.threshold:
            self._candidate.append(window)
            self._candidate_speech += 1
            self._candidate_gap = 0
        elif self._candidate:
            self._candidate.append(window)
            self._candidate_gap += 1
            if self._candidate_gap >= self.gap_windows:
                self._pre_roll.extend(self._candidate)  # a cough: forgotten, kept only as pre-roll
                self._reset_candidate()
            return []
        else:
            self._pre_roll.append(window)
            return []
        if self._candidate_speech < self.min_windows:
            return []
        self.in_turn = True
        self._utterance = [*self._pre_roll, *self._candidate]
        self._pre_roll.clear()
        self._reset_candidate()
        self._silence = 0
        return [TurnEvent("start")]

    def _in_turn(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        self._utterance.append(window)
        paused = self.early_windows is not None and self._silence >= self.early_windows
        self._silence = self._silence + 1 if prob < self.negative else 0
        if paused and self._silence == 0:
            return [TurnEvent("resume")]
        if self._silence == self.early_windows:
            return [TurnEvent("pause", np.concatenate(self._utterance[:self._spoken_windows()]))]
        if self._silence >= self.end_windows:
            audio = self._take(self._spoken_windows())
            self.in_turn = False
            self._silence = 0
            return [TurnEvent("end", audio)]
        if len(self._utterance) >= self.max_windows:
            return [TurnEvent("cut", self._take(len(self._utterance)))]
        return []

    def _spoken_windows(self) -> int:
        """The turn up to its last speech window, plus one window of the silence after it."""
        return max(1, len(self._utterance) - self._silence + 1)

    def _take(self, windows: int) -> np.ndarray:
        audio = np.concatenate(self._utterance[:windows])
        self._utterance = []
        return audio

    def _reset_candidate(self) -> None:
        self._candidate = []
        self._candidate_speech = 0
        self._candidate_gap = 0

    def reset(self) -> None:
        """Forget any turn in progress (mode switch)."""
        self._pre_roll.clear()
        self._reset_candidate()
        self._utterance = []
        self._silence = 0
        self.in_turn = False
