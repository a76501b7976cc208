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
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from aiortc.mediastreams import MediaStreamTrack

from listen.asr import ASRBusy
from listen.camera import LatestFrame, jpeg_data_url
from listen.listener import Listener
from listen.turns import TurnDetector, TurnEvent
from listen.uplink import FrameBuffer, UplinkReader
from listen.vad import VADStream
from ttsreal import QueueFull

if TYPE_CHECKING:
    from listen.asr import ASRWorker
    from listen.asrqueue import ASRRequest
    from listen.echo import EchoCanceller
    from listen.settings import ListenSettings
    from listen.vad import SileroModel
    from session import Session

logger = logging.getLogger(__name__)

class ListenResources(Protocol):
    """What a session's listening needs from the process (listen.service.ListenService provides it)."""

    settings: "ListenSettings"
    chat_problem: Callable[[], str | None]

    async def vad_model(self) -> "SileroModel": ...

    def asr_worker(self) -> "ASRWorker": ...


TURN_MODES = ("chat", "echo")  # the modes that detect turns and answer them


@dataclass
class Speculation:
    """A transcription started at a pause, used if that pause turns out to end the turn."""

    mode: str
    turn: int
    done: bool = False
    wanted: bool = False  # the pause ended the turn: this is the final transcript
    superseded: bool = False  # the user spoke on: this is a partial transcript of the turn so far
    text: str | None = None
    error: str | None = None
    request: "ASRRequest | None" = None  # the recogniser's ticket, to withdraw it while it waits


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
        self.speculations_used = 0  # turns whose final transcript was started at their last pause
        self.speculations_wasted = 0  # pauses the user spoke on after (their text went out as partials)
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
            if self.listener is not None:
                self.listener.reset()

    def _on_track(self, track: MediaStreamTrack) -> None:
        tag = self.session.id[:8]
        if track.kind == "video" and self.camera is None and self.service.settings.llm_vision:
            self.camera = LatestFrame()
            self.camera_reader = UplinkReader(track, self.camera, name=f"camera-{tag}")
        elif track.kind == "audio" and self.reader is None:
            buffer = FrameBuffer()

            def first_frame() -> None:  # the listener thread and the recogniser only for a peer that sends
                self._starting = asyncio.create_task(self._start_listener(buffer), name=f"listen-start-{tag}")

            self.reader = UplinkReader(track, buffer, name=f"uplink-{tag}", on_first_frame=first_frame)

    async def _start_listener(self, buffer: FrameBuffer) -> None:
        vad_model = await self.service.vad_model()
        self.service.asr_worker()  # start loading the recogniser before the user's first words
        if self.closed:
            return
        s = self.service.settings
        turns = TurnDetector(s.vad_threshold, s.min_speech_ms, s.end_silence_ms, s.max_utterance_s)
        self.listener = Listener(buffer, VADStream(vad_model), turns, self.session.engine, lambda: self.mode,
                                 self._turn_threadsafe, name=f"listen-{self.session.id[:8]}", echo=self.echo)

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
            events.publish({"type": "user_start"})
            if self.service.settings.barge_in:
                self.session.interrupt()
            return
        if event.kind == "pause":
            self._speculate(event, mode)
            return
        if event.kind == "resume":
            self._drop_speculation()
            return
        speculation, self._speculation = self._speculation, None
        if event.kind == "end":
            self._turn_open = False
            events.publish({"type": "user_end"})
            if speculation is not None:  # the pause was the end: its transcription is this turn's
                self.speculations_used += 1
                speculation.wanted = True
                if speculation.request is not None:
                    self.service.asr_worker().keep(speculation.request)
                if speculation.done:
                    self._finish(speculation)
                return
        elif speculation is not None:
            self.speculations_wasted += 1
        try:
            self.service.asr_worker().submit(event.audio, self._text_threadsafe(mode), self._error_threadsafe,
                                             source=self.session.id)
        except ASRBusy as exc:
            events.publish({"type": "error", "source": "asr", "msg": str(exc)})

    # ---- speculative transcription (loop) ---------------------------------
    def _speculate(self, event: TurnEvent, mode: str) -> None:
        """Start transcribing at the first short silence; the end of the turn, if it comes, reuses it."""
        self._drop_speculation()
        speculation = Speculation(mode, self._turn)

        def done(text: str | None = None, error: str | None = None) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._speculated, speculation, text, error)

        try:
            speculation.request = self.service.asr_worker().submit(
                event.audio, lambda text: done(text=text), lambda msg: done(error=msg), source=self.session.id,
                speculative=True)  # replaces this session's waiting speculation, if any
        except ASRBusy:
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

    def _speculated(self, speculation: "Speculation", text: str | None, error: str | None) -> None:
        speculation.done, speculation.text, speculation.error = True, text, error
        if speculation.wanted:
            self._finish(speculation)
        elif speculation.superseded:
            self._partial(speculation)

    def _partial(self, speculation: "Speculation") -> None:
        """Publish the turn so far (final: false), only while that turn is still open."""
        if (not self.closed and speculation.text and speculation.mode == self.mode
                and speculation.turn == self._turn and self._turn_open):
            self.session.events.publish({"type": "transcript", "text": speculation.text, "final": False})

    def _finish(self, speculation: "Speculation") -> None:
        if speculation.error is not None:
            self._on_error(speculation.error)
        else:
            self._on_text(speculation.text or "", speculation.mode)

    def _text_threadsafe(self, mode: str):
        def deliver(text: str) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._on_text, text, mode)
        return deliver

    def _error_threadsafe(self, message: str) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_error, message)

    def _on_error(self, message: str) -> None:
        if not self.closed:
            self.session.events.publish({"type": "error", "source": "asr", "msg": message})

    # ---- replies (loop) ---------------------------------------------------
    def _on_text(self, text: str, mode: str) -> None:
        if self.closed or mode != self.mode or not text:
            return
        session = self.session
        session.events.publish({"type": "transcript", "text": text, "final": True})
        if mode == "echo":
            try:
                session.tts.say(text, session.tts_backend)
            except ValueError:
                return  # only punctuation was recognised
            except QueueFull as exc:
                session.events.publish({"type": "error", "source": "tts", "msg": str(exc)})
            return
        problem = self.service.chat_problem()
        if problem:
            session.events.publish({"type": "error", "source": "llm", "kind": "not_configured", "msg": problem})
            return
        if self.service.settings.llm_vision and self.camera is not None and self.camera.frame is not None:
            task = asyncio.create_task(self._chat_with_image(text), name=f"vision-{session.id[:8]}")
            self._vision.add(task)
            task.add_done_callback(self._vision.discard)
        else:
            session.chat(text, session.tts_backend)

    async def _chat_with_image(self, text: str) -> None:
        """The chat turn with the latest camera frame (JPEG encoding off the loop); without it if that fails."""
        image: str | None = None
        try:
            image = await self._loop.run_in_executor(None, jpeg_data_url, self.camera.frame)
        except ValueError as exc:
            logger.warning("session %s: camera frame not sent: %s", self.session.id[:8], exc)
        if not self.closed:
            self.session.chat(text, self.session.tts_backend, image=image)

    async def close(self) -> None:
        self.closed = True
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
