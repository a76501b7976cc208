"""One session's listening, on the event loop: tracks in, turn events out, replies by mode.

`SessionListening` receives the peer connection's remote tracks, starts the
uplink reader and the listener thread for audio (and an uplink reader into a `LatestFrame` for video),
and routes what the listener finds: `user_start` (and barge-in), `user_end`,
the utterance to the process's ASR worker, then the `transcript` event and the
reply of the current mode (echo: speak it; chat: the LLM answers it).
The transcription starts speculatively at each short pause of a turn; when that
pause becomes the end of the turn its result is the final transcript (published
only after `user_end`); when the user speaks on, it is published as a partial
transcript (`final: false`) of the turn so far.
When the user speaks on right after a turn the models ended (`continues`, see listen.turns),
that turn's reply is withdrawn: silenced if it had started, its exchange out of the chat
history, its transcript (if still to come) unanswered; the continued turn's transcript and
reply cover the whole sentence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from aiortc.mediastreams import MediaStreamTrack

from listen.asr import ASRBusy
from listen.camera import LatestFrame, jpeg_data_url
from listen.listener import Listener
from listen.reply import Reply, ReplyRefused, TurnClock
from listen.transcript import Transcript
from listen.turns import TurnDetector, TurnEvent
from listen.uplink import FrameBuffer, UplinkReader, fast_receive
from listen.vad import VADStream

if TYPE_CHECKING:
    from listen.asr import ASRWorker
    from listen.asrqueue import ASRRequest
    from listen.echo import EchoCanceller
    from listen.settings import ListenSettings
    from listen.smartturn import TurnModel
    from listen.vad import SileroModel
    from session import Session

logger = logging.getLogger(__name__)

class ListenResources(Protocol):
    """What a session's listening needs from the process (listen.service.ListenService provides it)."""

    settings: "ListenSettings"
    chat_problem: Callable[[], str | None]

    async def vad_model(self) -> "SileroModel": ...

    async def turn_model(self) -> "TurnModel | None": ...

    def asr_worker(self) -> "ASRWorker": ...


TURN_MODES = ("chat", "echo")  # the modes that detect turns and answer them
WITHDRAWN_KEPT = 8  # turns whose answer was withdrawn are remembered this many turns (their text may still come)


@dataclass
class Speculation:
    """A transcription started at a pause, used if that pause turns out to end the turn."""

    mode: str
    turn: int
    pause: int = 0  # the detector's number for the pause, quoted back with the transcript's verdict
    done: bool = False
    wanted: bool = False  # the pause ended the turn: this is the final transcript
    superseded: bool = False  # the user spoke on: this is a partial transcript of the turn so far
    text: str | None = None
    error: str | None = None
    clock: TurnClock | None = None  # set when the pause became the end of the turn
    request: "ASRRequest | None" = None  # the recogniser's ticket, to withdraw it while it waits
    preparing: "asyncio.Task | None" = None  # its reply waits for the camera frame's JPEG (--llm-vision)


class SessionListening:
    """Everything one session does with the user's media; `close()` releases it."""

    def __init__(self, service: "ListenResources", session: "Session", mode: str):
        self.service = service
        self.session = session
        self.mode = mode
        self._loop = asyncio.get_running_loop()
        self.reader: UplinkReader | None = None
        self.listener: Listener | None = None
        self.echo: "EchoCanceller | None" = None  # set by the service when this session may cancel echo
        self.camera: LatestFrame | None = None
        self.camera_reader: UplinkReader | None = None
        self._starting: asyncio.Task | None = None
        self._speculation: Speculation | None = None
        self._vision: set[asyncio.Task] = set()  # camera frames being encoded for a chat turn
        self._turn = 0  # the user's turns so far; a partial transcript belongs to the current one
        self._turn_open = False
        self._ending: tuple[int, "ASRRequest"] | None = None  # the last ended turn's transcription
        self._answer: tuple[int, Reply] | None = None  # the last released reply, and the turn it answers
        self._withdrawn: set[int] = set()  # turns the user went on with: their transcripts are not answered
        self.speculations_used = 0  # turns whose final transcript was started at their last pause
        self.speculations_wasted = 0  # pauses the user spoke on after (their text went out as partials)
        self._prepared: Reply | None = None  # at most one reply prepared while the turn is pending
        self.preparations_used = 0  # replies prepared at a pause and released when that pause ended the turn
        self.preparations_dropped = 0  # replies prepared at a pause the user spoke on after (no trace left)
        self.closed = False
        if not service.settings.llm_vision:  # the camera is never used: aiortc does not even decode it
            for transceiver in session.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.direction = "sendonly"
        session.pc.on("track", self._on_track)
        for transceiver in session.pc.getTransceivers():  # tracks the offer announced before we attached
            if transceiver.receiver.track is not None:
                self._on_track(transceiver.receiver.track)

    # ---- control (event loop) ---------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode != self.mode:
            logger.info("session %s: listen %s -> %s", self.session.tag, self.mode, mode)
            self.mode = mode
            self._drop_prepared()
            if self.listener is not None:
                self.listener.reset()

    def _on_track(self, track: MediaStreamTrack) -> None:
        tag = self.session.id[:8]
        if track.kind == "video" and self.camera is None and self.service.settings.llm_vision:
            self.camera = LatestFrame()
            self.camera_reader = UplinkReader(track, self.camera, name=f"camera-{tag}")
        elif track.kind == "audio" and self.reader is None:
            fast_receive(self.session.pc, track)
            buffer = FrameBuffer()

            def first_frame() -> None:  # the listener thread and the recogniser only for a peer that sends
                self._starting = asyncio.create_task(self._start_listener(buffer), name=f"listen-start-{tag}")

            self.reader = UplinkReader(track, buffer, name=f"uplink-{tag}", on_first_frame=first_frame)

    async def _start_listener(self, buffer: FrameBuffer) -> None:
        vad_model = await self.service.vad_model()
        turn_model = await self.service.turn_model()
        self.service.asr_worker()  # start loading the recogniser before the user's first words
        if self.closed:
            return
        s = self.service.settings
        fallback_ms = s.turn_fallback_silence_ms if turn_model is not None else None
        turns = TurnDetector(s.vad_threshold, s.min_speech_ms, s.end_silence_ms, s.max_utterance_s, fallback_ms)
        self.listener = Listener(buffer, VADStream(vad_model), turns, self.session.engine, lambda: self.mode,
                                 self._turn_threadsafe, name=f"listen-{self.session.id[:8]}", turn_model=turn_model,
                                 echo=self.echo)

    # ---- turns (listener thread -> loop) ----------------------------------
    def _turn_threadsafe(self, event: TurnEvent) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_turn, event, self.mode)

    def _on_turn(self, event: TurnEvent, mode: str) -> None:
        if self.closed or mode != self.mode or mode not in TURN_MODES:
            return
        events = self.session.events
        if event.kind == "start":
            self._turn += 1
            self._turn_open = True
            self._drop_prepared()
            events.publish({"type": "user_start", "continues": True} if event.continues else {"type": "user_start"})
            silence = self.service.settings.barge_in
            if event.continues:
                silence |= self._withdraw(self._turn - 1)
            if silence:
                self.session.interrupt()
            return
        if event.kind == "pause":
            self._speculate(event, mode)
            return
        if event.kind == "resume":
            self._drop_speculation()
            self._drop_prepared()
            return
        speculation, self._speculation = self._speculation, None
        clock: TurnClock | None = None
        if event.kind == "end":
            self._turn_open = False
            clock = TurnClock.ended(event.silence_ms, event.reason)
            events.publish({"type": "user_end", "reason": event.reason})
            if speculation is not None:  # the pause was the end: its transcription is this turn's
                self.speculations_used += 1
                speculation.wanted = True
                speculation.clock = clock
                if speculation.request is not None:
                    self.service.asr_worker().keep(speculation.request)
                    self._ending = (speculation.turn, speculation.request)
                if speculation.done:
                    self._finish(speculation)
                return
        elif speculation is not None:
            self.speculations_wasted += 1
        try:
            request = self.service.asr_worker().submit(event.audio, self._text_threadsafe(mode, clock, self._turn),
                                                       self._error_threadsafe, source=self.session.id)
            if event.kind == "end":
                self._ending = (self._turn, request)
        except ASRBusy as exc:
            events.publish({"type": "error", "source": "asr", "msg": str(exc)})

    def _withdraw(self, turn: int) -> bool:
        """The user went on with `turn` (the new turn continues it): its reply is withdrawn, and True
        when one had been released (it must be silenced, barge-in or not)."""
        self._withdrawn = {t for t in self._withdrawn if t > turn - WITHDRAWN_KEPT} | {turn}
        ending, self._ending = self._ending, None
        if ending is not None and ending[0] == turn:
            self.service.asr_worker().cancel(ending[1])  # not started yet: the continued turn's is wanted instead
        answer, self._answer = self._answer, None
        if answer is None or answer[0] != turn:
            return False
        answer[1].withdraw()
        return True

    # ---- speculative transcription (loop) ---------------------------------
    def _speculate(self, event: TurnEvent, mode: str) -> None:
        """Start transcribing at the first short silence; the end of the turn, if it comes, reuses it."""
        self._drop_speculation()
        speculation = Speculation(mode, self._turn, event.pause)

        def done(transcript: Transcript | None = None, error: str | None = None) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._speculated, speculation, transcript, error)

        try:
            speculation.request = self.service.asr_worker().submit(
                event.audio, lambda transcript: done(transcript=transcript), lambda msg: done(error=msg),
                source=self.session.id,
                speculative=True)  # replaces this session's waiting speculation, if any
        except ASRBusy:
            self._judge_text(event.pause, None)  # no transcript to wait for: the audio's verdict stands
            return  # the end of the turn will ask again (and report if still busy)
        self._speculation = speculation

    def _drop_speculation(self) -> None:
        """The user spoke on after the pause: its transcription becomes a partial transcript."""
        speculation, self._speculation = self._speculation, None
        if speculation is not None:
            self.speculations_wasted += 1
            speculation.superseded = True
            if speculation.done:
                self._partial(speculation)
            elif speculation.request is not None:
                self.service.asr_worker().cancel(speculation.request)  # not started yet: nobody needs it now

    def _speculated(self, speculation: "Speculation", transcript: Transcript | None, error: str | None) -> None:
        speculation.done, speculation.error = True, error
        speculation.text = transcript.text if transcript is not None else None
        if not speculation.superseded and not speculation.wanted:  # an error: the audio's verdict stands
            self._judge_text(speculation.pause, transcript)
        if speculation.wanted:
            self._finish(speculation)
        elif speculation.superseded:
            self._partial(speculation)
        else:
            self._prepare(speculation)

    def _judge_text(self, pause: int, transcript: Transcript | None) -> None:
        """The second signal of the turn's end: the pause's transcript (None: there is none)."""
        if self.listener is not None and not self.closed:
            self.listener.judge_text(pause, transcript)

    # ---- replies prepared before the end of the turn (loop) -----------------
    def _prepare(self, speculation: "Speculation") -> None:
        """The turn is still pending and its transcript is ready: start the reply behind a gate."""
        if not self._pending(speculation):
            return
        if speculation.mode == "chat" and self.service.chat_problem():
            return  # reported at the end of the turn
        if speculation.mode == "chat" and self._wants_image():  # the camera frame at the pause goes with it
            task = asyncio.create_task(self._prepare_with_image(speculation), name=f"vision-{self.session.id[:8]}")
            speculation.preparing = task
            self._vision.add(task)
            task.add_done_callback(self._vision.discard)
            return
        self._start_prepared(speculation, image=None)

    def _pending(self, speculation: "Speculation") -> bool:
        """The speculation's turn is still open and still this session's current one."""
        return not (self.closed or speculation.mode != self.mode or speculation.turn != self._turn
                    or not self._turn_open or speculation.superseded or speculation.wanted
                    or not speculation.text or speculation.mode not in TURN_MODES)

    async def _prepare_with_image(self, speculation: "Speculation") -> None:
        try:
            image = await self._camera_jpeg()
        finally:
            speculation.preparing = None
        if self._pending(speculation):
            self._start_prepared(speculation, image)
        elif speculation.wanted and not self.closed:  # the turn ended while the frame was encoded: answer now
            if speculation.mode == self.mode:
                self._start_prepared(speculation, image)
            self._finish(speculation)

    def _start_prepared(self, speculation: "Speculation", image: str | None) -> None:
        self._drop_prepared()
        try:
            self._prepared = Reply(self.session, speculation.text, speculation.mode, prepared=True, image=image)
        except ReplyRefused:
            return  # said at the end of the turn, if it ends here

    def _drop_prepared(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            self._dropped(prepared)

    def _dropped(self, prepared: Reply) -> None:
        """A prepared reply goes without a trace; only the count (and the metric) remembers it."""
        prepared.drop()
        self.preparations_dropped += 1
        if self.session.probe is not None:
            self.session.probe.reply_prepared(used=False)

    def _wants_image(self) -> bool:
        return self.service.settings.llm_vision and self.camera is not None and self.camera.frame is not None

    def _partial(self, speculation: "Speculation") -> None:
        """Publish the turn so far (final: false), only while that turn is still open."""
        if (not self.closed and speculation.text and speculation.mode == self.mode
                and speculation.turn == self._turn and self._turn_open):
            self.session.events.publish({"type": "transcript", "text": speculation.text, "final": False})

    def _finish(self, speculation: "Speculation") -> None:
        if speculation.preparing is not None:
            return  # its reply is being prepared with the camera frame: that finishes the turn
        if speculation.error is not None:
            self._on_error(speculation.error)
        else:
            self._on_text(speculation.text or "", speculation.mode, speculation.turn, speculation.clock)

    def _text_threadsafe(self, mode: str, clock: TurnClock | None, turn: int):
        def deliver(transcript: Transcript) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._on_text, transcript.text, mode, turn, clock)
        return deliver

    def _error_threadsafe(self, message: str) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_error, message)

    def _on_error(self, message: str) -> None:
        if not self.closed:
            self.session.events.publish({"type": "error", "source": "asr", "msg": message})

    # ---- replies (loop) ---------------------------------------------------
    def _on_text(self, text: str, mode: str, turn: int, clock: TurnClock | None = None) -> None:
        if turn in self._withdrawn:  # the user went on: the continued turn answers the whole of it
            self._withdrawn.discard(turn)
            return
        prepared, self._prepared = self._prepared, None
        if self.closed or mode != self.mode or not text:
            if prepared is not None:
                self._dropped(prepared)
            return
        session = self.session
        if clock is not None:
            clock.transcript = time.monotonic()
        session.events.publish({"type": "transcript", "text": text, "final": True})
        if prepared is not None and prepared.text == text and prepared.mode == mode:
            self.preparations_used += 1
            if session.probe is not None:
                session.probe.reply_prepared(used=True)
            prepared.release(clock)  # prepared while the turn was pending: it plays now
            self._answer = (turn, prepared)
            return
        if prepared is not None:
            self._dropped(prepared)
        if mode == "chat":
            problem = self.service.chat_problem()
            if problem:
                session.events.publish({"type": "error", "source": "llm", "kind": "not_configured", "msg": problem})
                return
            if self._wants_image():
                task = asyncio.create_task(self._chat_with_image(text, turn, clock), name=f"vision-{session.id[:8]}")
                self._vision.add(task)
                task.add_done_callback(self._vision.discard)
                return
        self._reply(text, mode, turn, clock, image=None)

    def _reply(self, text: str, mode: str, turn: int, clock: TurnClock | None, image: str | None) -> None:
        try:
            reply = Reply(self.session, text, mode, prepared=False, image=image)
        except ReplyRefused as exc:
            if str(exc):
                self.session.events.publish({"type": "error", "source": "tts", "msg": str(exc)})
            return
        reply.release(clock)
        self._answer = (turn, reply)

    async def _chat_with_image(self, text: str, turn: int, clock: TurnClock | None) -> None:
        """The chat turn with the latest camera frame; without it if that fails."""
        image = await self._camera_jpeg()
        if not self.closed and turn not in self._withdrawn:
            self._reply(text, "chat", turn, clock, image)

    async def _camera_jpeg(self) -> str | None:
        """The latest camera frame as a JPEG data: URL, encoded off the loop (None if it cannot be)."""
        try:
            return await self._loop.run_in_executor(None, jpeg_data_url, self.camera.frame)
        except ValueError as exc:
            logger.warning("session %s: camera frame not sent: %s", self.session.id[:8], exc)
            return None

    async def close(self) -> None:
        self.closed = True
        self._drop_prepared()
        pending = [task for task in (self._starting, *self._vision) if task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for part in (self.reader, self.camera_reader):
            if part is not None:
                await part.close()
        if self.listener is not None:
            await self._loop.run_in_executor(None, self.listener.close)
            self.service.asr_worker().cancel_source(self.session.id)  # its utterances are for nobody now
