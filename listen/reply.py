"""A reply to one of the user's turns: started behind a gate, released at the turn's end or dropped.

The reply is started as soon as a transcript is ready, often before the turn is over
(a speculative transcript at a pause): echo starts the TTS, chat the LLM stream and the
TTS of its sentences (what LiveKit calls preemptive generation). Nothing reaches the engine
before `release()`; `drop()` (the user spoke on) leaves no trace on the wire, in the chat
history or in the events; `withdraw()` (the user went on with the turn after all) takes a
released chat reply out of the history. Once released, the reply reports its turn's latency breakdown
as a `turn` event when its first voiced frame is handed to WebRTC.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sync.gate import Gate
from ttsreal import QueueFull

if TYPE_CHECKING:
    from session import Session

TURN_STAGES = ("decision", "transcript", "llm_first_token", "tts_first_audio", "first_voiced_frame")


class ReplyRefused(Exception):
    """The reply could not start (nothing speakable, the TTS queue full); the message says why."""


@dataclass
class TurnClock:
    """time.monotonic() moments of one turn, from the server's side."""

    speech_end: float  # the end of the user's last speech window (the decision time less the silence heard)
    decided: float  # the turn was judged over
    reason: str  # model | transcript | fallback | silence
    transcript: float | None = None

    @classmethod
    def ended(cls, silence_ms: int, reason: str) -> "TurnClock":
        now = time.monotonic()
        return cls(now - silence_ms / 1000, now, reason)


class Reply:
    """One turn's answer, echo or chat, behind a gate."""

    def __init__(self, session: "Session", text: str, mode: str, prepared: bool, image: str | None = None):
        self.session = session
        self.text = text
        self.mode = mode
        self.prepared = prepared  # started before the turn was over
        self.gate = Gate()
        self._clock: TurnClock | None = None
        if mode == "echo":
            try:
                utterance_id, _ = session.tts.say(text, session.tts_backend, self.gate)
            except ValueError:
                raise ReplyRefused("") from None  # only punctuation was recognised: nothing to say
            except QueueFull as exc:
                raise ReplyRefused(str(exc)) from None
            self.gate.tags.append(utterance_id)
        else:
            session.chat(text, session.tts_backend, image=image, gate=self.gate)  # image: a chat turn's camera frame

    def release(self, clock: TurnClock | None) -> None:
        """The turn is over: play the reply, and time it (when the turn's clock is known)."""
        if self.gate.release() and clock is not None:
            self._clock = clock
            self.session.events.listeners.append(self._watch)

    def drop(self) -> None:
        self.session.drop_prepared(self.gate)
        self._unwatch()

    def withdraw(self) -> None:
        """Released, but the user went on with the turn it answers: it stops (the caller silences
        the session), a chat exchange leaves the history, and its timing is never reported."""
        self._clock = None
        self._unwatch()
        self.session.withdraw_reply(self.gate)

    def _unwatch(self) -> None:
        if self._watch in self.session.events.listeners:
            self.session.events.listeners.remove(self._watch)

    def _watch(self, event: dict[str, Any]) -> None:
        """The session's events: the reply's first `start` (its first voiced frame handed to WebRTC) ends the timing."""
        if event.get("type") == "start" and event.get("utterance") in self.gate.tags and self._clock is not None:
            clock, self._clock = self._clock, None
            report = timing(clock, self.gate.marks, time.monotonic(), self.mode, self.prepared)
            asyncio.get_running_loop().call_soon(self._report, report)
        elif event.get("type") == "end" and event.get("interrupted"):
            self._clock = None  # cut before it was heard (barge-in): no timing
            asyncio.get_running_loop().call_soon(self._unwatch)

    def _report(self, report: dict[str, Any]) -> None:
        self._unwatch()
        if not self.session.closed:
            self.session.events.publish(report)


def timing(clock: TurnClock, marks: dict[str, float], voiced: float, mode: str, prepared: bool) -> dict[str, Any]:
    """The `turn` event: each stage in ms after the end of the user's speech (absent when it did not happen)."""
    moments = {"decision": clock.decided, "transcript": clock.transcript,
               "llm_first_token": marks.get("llm_first_token"), "tts_first_audio": marks.get("tts_first_audio"),
               "first_voiced_frame": voiced}
    stages = {stage: round(1000 * (moment - clock.speech_end)) for stage, moment in moments.items()
              if moment is not None}
    return {"type": "turn", "mode": mode, "reason": clock.reason, "prepared": prepared, "ms": stages}
