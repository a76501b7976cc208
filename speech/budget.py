"""A session's budget of held audio, in seconds (not in items).

An upload is a few kilobytes that can decode to many minutes of audio, so what a
session may hold is counted in seconds: an upload reserves its duration when it
is queued and gives it back when it has been played (or dropped by an interrupt
or a close). A request that would go over the budget is refused (429).
"""

from __future__ import annotations

import threading

DEFAULT_SPEECH_BUDGET_S = 120.0


class SpeechBudgetFull(Exception):
    """The session already holds as much audio as it may."""


class SpeechBudget:
    """Thread-safe: reserved on the event loop, released by the TTS thread."""

    def __init__(self, limit_s: float = DEFAULT_SPEECH_BUDGET_S):
        self.limit_s = limit_s
        self._held_s = 0.0
        self._lock = threading.Lock()

    @property
    def held_s(self) -> float:
        with self._lock:
            return self._held_s

    def remaining_s(self) -> float:
        with self._lock:
            return max(0.0, self.limit_s - self._held_s)

    def reserve(self, seconds: float) -> None:
        with self._lock:
            if self._held_s + seconds > self.limit_s:
                raise SpeechBudgetFull(
                    f"this session already holds {self._held_s:.0f} s of audio and may hold {self.limit_s:g} s "
                    f"(--speech-budget): wait for it to play or interrupt it")
            self._held_s += seconds

    def release(self, seconds: float) -> None:
        with self._lock:
            self._held_s = max(0.0, self._held_s - seconds)
