"""A one-shot gate between the event loop and a worker thread: held, then released or dropped.

A reply prepared before the user's turn is over (TTS started, LLM streaming) waits at
its gate on the worker thread; the loop releases it the instant the turn ends, or drops
it when the user speaks on. Either happens once; a dropped gate never opens.
"""

from __future__ import annotations

import threading
import time

HELD, RELEASED, DROPPED = "held", "released", "dropped"


class Gate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided = threading.Event()
        self.state = HELD
        self.tags: list[str] = []  # what is held here (utterance ids), for whoever releases or drops it
        self.marks: dict[str, float] = {}  # first time.monotonic() of each named moment of the held work

    def mark(self, name: str) -> None:
        """Note when `name` first happened (any thread)."""
        self.marks.setdefault(name, time.monotonic())

    def _decide(self, state: str) -> bool:
        with self._lock:
            if self.state != HELD:
                return False
            self.state = state
        self._decided.set()
        return True

    def release(self) -> bool:
        """Let the held work through; False if it was already decided."""
        return self._decide(RELEASED)

    def drop(self) -> bool:
        """The work is not wanted; False if it was already decided."""
        return self._decide(DROPPED)

    def wait(self, timeout: float) -> str:
        """The state after waiting up to `timeout` seconds for a decision (HELD if none came)."""
        self._decided.wait(timeout)
        return self.state

    @property
    def open(self) -> bool:
        return self.state == RELEASED
