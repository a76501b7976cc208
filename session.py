"""One client's session (engine + tracks + peer connection) and the registry of them.

The registry counts sessions that are still being built, so the limit holds
under concurrent offers. Session ids are uuid4 and never listed by any endpoint:
knowing an id is what lets a client drive that session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import contextlib

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError

from basereal import BaseReal
from llm import Conversation, LLMClient, LLMError
from media import SpeechEvent
from speech.budget import SpeechBudget
from sync.gate import Gate
from ttsreal import QueueFull, TTSWorker
from tts.base import TTSBackend
from webrtc import HumanPlayer

if TYPE_CHECKING:
    from observers import SessionObserver

logger = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 256
MAX_SUBSCRIBERS = 8  # event streams one session may hold open


class TooManySubscribers(Exception):
    pass


class SessionLimitError(Exception):
    """No room for another session: 503 when the server is full, 429 when one client holds too many."""

    def __init__(self, msg: str, status: int = 503):
        super().__init__(msg)
        self.status = status


def channel_usable(channel: RTCDataChannel) -> bool:
    """Open, with its SCTP association and DTLS transport still up: aiortc flushes a send in a task of
    its own, which fails unobserved ("Task exception was never retrieved") once the transport is gone."""
    if channel.readyState != "open":
        return False
    sctp = channel.transport
    return sctp.state == "connected" and sctp.transport.state == "connected"


class EventHub:
    """Fans a session's events out to SSE subscribers and the page's data channel.

    Lives on the event loop; threads publish through `publish_threadsafe`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._subscribers: set[asyncio.Queue] = set()
        self.channel: RTCDataChannel | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. metrics counting errors

    def subscribe(self) -> asyncio.Queue:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise TooManySubscribers(f"this session already has {MAX_SUBSCRIBERS} event streams open")
        q: asyncio.Queue = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def publish(self, event: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(event)
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()  # a stalled reader loses its oldest event, never blocks us
            q.put_nowait(event)
        channel = self.channel
        if channel is not None and channel_usable(channel):
            try:
                channel.send(json.dumps(event))
            except (InvalidStateError, ConnectionError):  # closed under us: the page is gone
                self.channel = None

    def publish_threadsafe(self, event: dict[str, Any]) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.publish, event)

    def close(self) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(None)  # tells SSE handlers to finish
        self._subscribers.clear()


class Session:
    """Everything one connected client owns; close() releases all of it."""

    def __init__(
        self,
        session_id: str,
        engine: BaseReal,
        pc: RTCPeerConnection,
        loop: asyncio.AbstractEventLoop,
        tts_backend: TTSBackend,
        llm: LLMClient,
        budget: SpeechBudget | None = None,
        client: str = "unknown",
        probe: "SessionObserver | None" = None,
    ):
        self.id = session_id
        self.tag = session_id[:8]  # what the log shows: enough to follow a session, not to drive it
        self.client = client  # the remote address that made the offer
        self.connected = False  # set once the peer connection has been up
        self.probe = probe
        self.engine = engine
        self.pc = pc
        self.events = EventHub(loop)
        self.tts_backend = tts_backend
        self.tts = TTSWorker(engine, self._on_tts_error, name=f"tts-{session_id[:8]}", budget=budget,
                             on_first_audio=probe.tts_first_audio if probe else None)
        self.conversation = Conversation(llm)
        self._reply_sentences: dict[str, str] = {}  # utterance id -> chat sentence awaiting playout
        self._reply_task: asyncio.Task | None = None
        self._reply_gate: Gate | None = None  # the gate of the chat reply in _reply_task, when it was prepared
        self._playing: SpeechEvent | None = None  # the utterance on the wire now
        self.created = time.monotonic()
        self.last_activity = self.created
        self.closed = False
        self.broadcast = False  # pushed to a media server (rtmp/whip) rather than answered to a peer
        self.player = HumanPlayer(
            engine.output,
            engine.config.fps,
            current_epoch=lambda: engine.epoch,
            filler=engine.idle_bundle,
            on_playout=self._on_playout,
            probe=probe,
        )
        if probe is not None:
            self.events.listeners.append(probe.event)
        self._close_lock = asyncio.Lock()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.close_reason = ""

    @property
    def speaking(self) -> bool:
        """True while an utterance's audio is being handed to WebRTC."""
        return self._playing is not None

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Something attached to this session (e.g. its listening) that close() must release first."""
        self._closers.append(closer)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def _on_tts_error(self, message: str) -> None:
        """Called from the TTS thread when synthesis fails; the session keeps going."""
        self.events.publish_threadsafe({"type": "error", "source": "tts", "msg": message})

    def _on_playout(self, event: SpeechEvent) -> None:
        """Called by the audio track when an event's chunk is handed to WebRTC."""
        self._playing = event if event.kind == "start" else None
        self.events.publish(event.as_dict())
        if event.kind == "end" and event.utterance_id in self._reply_sentences:
            self.conversation.mark_spoken(self._reply_sentences.pop(event.utterance_id))

    def chat(self, text: str, backend: TTSBackend, image: str | None = None, gate: Gate | None = None) -> None:
        """Answer through the LLM: each sentence is spoken as soon as it is complete.

        Replies run one at a time; a new question waits for the reply before it
        (unless the caller interrupted first, which ends that reply at once).
        `image` (a data: or https: URL) goes with this turn only, as an image part.
        With a `gate` the reply is prepared (LLM streaming, TTS of its sentences) but nothing
        plays before the gate is released; `drop_prepared(gate)` removes every trace of it.
        """
        previous = self._reply_task
        self._reply_task = asyncio.create_task(self._reply(text, backend, previous, image, gate),
                                               name=f"chat-{self.id[:8]}")
        self._reply_gate = gate

    async def _reply(self, text: str, backend: TTSBackend, previous: asyncio.Task | None, image: str | None,
                     gate: Gate | None = None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        epoch = self.engine.epoch
        first_delta = (lambda: gate.mark("llm_first_token")) if gate is not None else None
        try:
            async with contextlib.aclosing(self.conversation.reply(text, image, first_delta, tag=gate)) as sentences:
                async for sentence in sentences:
                    if self.engine.epoch != epoch:
                        return
                    try:
                        utterance_id, _ = self.tts.say(sentence, backend, gate)
                    except ValueError:
                        continue  # only emoji or markup: nothing to speak
                    self._reply_sentences[utterance_id] = sentence
                    if gate is not None:
                        gate.tags.append(utterance_id)
        except LLMError as exc:
            logger.warning("chat failed in session %s: %s", self.tag, exc)
            self.events.publish({"type": "error", "source": "llm", "kind": exc.kind.name.lower(), "msg": str(exc)})
        except QueueFull as exc:
            self.events.publish({"type": "error", "source": "tts", "msg": str(exc)})

    def drop_prepared(self, gate: Gate) -> None:
        """A reply prepared behind `gate` for a turn the user did not end: gone without a trace
        (its audio never reaches the engine, its exchange leaves the chat history)."""
        if not gate.drop():
            return
        for utterance_id in gate.tags:
            self._reply_sentences.pop(utterance_id, None)
        self.withdraw_reply(gate)

    def withdraw_reply(self, gate: Gate) -> None:
        """A released reply answered a turn the user went on with: its exchange leaves the chat
        history (the continued turn's answer replaces it); the caller silences the session."""
        if self._reply_gate is gate and self._reply_task is not None:
            self._reply_task.cancel()
            self._reply_gate = None
        self.conversation.retract(gate)

    def interrupt(self) -> int:
        """Silence the avatar now: drop queued speech everywhere, keep the stream running."""
        self.tts.clear()
        self.conversation.interrupt()
        if self._reply_task is not None:
            self._reply_task.cancel()
        self._reply_sentences.clear()
        epoch = self.engine.interrupt()
        self.player.schedule.drop_pending()
        if self.probe is not None:
            self.probe.interrupted(epoch)
        if self._playing is not None:
            cut = SpeechEvent("end", self._playing.utterance_id, self._playing.text, interrupted=True)
            self._playing = None
            self.events.publish(cut.as_dict())
        return epoch

    async def close(self, reason: str) -> None:
        async with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
            logger.info("closing session %s: %s", self.tag, reason)
            self.player.stop()
            for closer in self._closers:
                await closer()
            if self._reply_task is not None:
                self._reply_task.cancel()
                await asyncio.wait([self._reply_task])
            self.events.publish({"type": "closed", "reason": reason})
            self.events.close()
            await asyncio.get_running_loop().run_in_executor(None, self._stop_threads)
            await self.pc.close()

    def _stop_threads(self) -> None:
        self.tts.stop()
        self.engine.stop()  # the TTS backend is shared by the process (TTSFactory closes it)


class SessionRegistry:
    """Live sessions by id, with limits that count sessions still being built.

    Besides the server-wide limit, one client address may have only a few
    sessions that are being built or have not connected yet, so offers that
    never connect cannot take every slot.
    """

    def __init__(self, max_sessions: int, id_prefix: str | None = None):
        self.max_sessions = max_sessions
        self.id_prefix = id_prefix  # names this worker in every id, so a proxy can route by it
        self._sessions: dict[str, Session] = {}
        self._reserved: dict[str, int] = {}  # client address -> sessions being built
        self.new_id: Callable[[], str] = lambda: str(uuid.uuid4())

    def pending(self, client: str) -> int:
        """Sessions of this client being built or not yet connected."""
        return self._reserved.get(client, 0) + sum(
            1 for s in self._sessions.values() if s.client == client and not s.connected)

    @property
    def starting(self) -> int:
        """Sessions reserved and still being built."""
        return sum(self._reserved.values())

    def reserve(self, client: str = "unknown", max_pending: int = 0, session_id: str | None = None) -> str:
        """Claim a slot for a session being built (raises SessionLimitError); a fixed id may be asked for."""
        if len(self._sessions) + sum(self._reserved.values()) >= self.max_sessions:
            raise SessionLimitError(
                f"server is at its limit of {self.max_sessions} sessions: try again later"
            )
        if max_pending > 0 and self.pending(client) >= max_pending:
            raise SessionLimitError(
                f"this address already has {max_pending} sessions connecting: finish or close them first",
                status=429,
            )
        if session_id is not None and session_id in self._sessions:
            raise SessionLimitError(f"session {session_id!r} already exists")
        self._reserved[client] = self._reserved.get(client, 0) + 1
        if session_id is not None:
            return session_id
        new_id = self.new_id()
        return f"{self.id_prefix}-{new_id}" if self.id_prefix else new_id

    def release_reservation(self, client: str = "unknown") -> None:
        left = self._reserved.get(client, 0) - 1
        if left > 0:
            self._reserved[client] = left
        else:
            self._reserved.pop(client, None)

    def add(self, session: Session) -> None:
        self.release_reservation(session.client)
        self._sessions[session.id] = session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    async def close(self, session_id: str, reason: str) -> None:
        """Close a session and forget it; concurrent calls all wait for the one close."""
        session = self._sessions.get(session_id)
        if session is not None:
            await session.close(reason)
            self._sessions.pop(session_id, None)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self._sessions)))
