"""What the pipeline tells an observer of one session (metrics, for one): the contract, at the bottom.

The session, its TTS worker and its tracks call these hooks; nothing in the pipeline
imports an implementation (`ops.metrics.SessionProbe` is the one the server uses).
Calls come from the event loop, except `tts_first_audio` (the session's TTS thread).
"""

from __future__ import annotations

from typing import Any, Protocol

from media import AVBundle


class SessionObserver(Protocol):
    def text_received(self) -> None:
        """Text (or an upload) arrived to be spoken."""

    def interrupted(self, epoch: int) -> None:
        """The session was interrupted; `epoch` is the new one."""

    def video_sent(self, bundle: AVBundle, late_ticks: int) -> None:
        """A video frame was handed to WebRTC; `late_ticks`: the track's late ticks so far."""

    def audio_sent(self, bundle: AVBundle) -> None:
        """A frame's audio was handed to WebRTC."""

    def tts_first_audio(self, backend: str, seconds: float) -> None:
        """The first audio of a sentence came from `backend` after `seconds`."""

    def reply_prepared(self, used: bool) -> None:
        """A reply prepared before the end of the user's turn was released (`used`) or dropped without a trace."""

    def event(self, event: dict[str, Any]) -> None:
        """Every event the session publishes."""
