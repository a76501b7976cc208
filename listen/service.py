"""Process-wide listening: settings, the shared VAD model and ASR worker, routes, per-session attach.

`register(app, ...)` creates the `ListenService` (one per server), adds
`POST /listen` and closes the ASR worker on shutdown. `attach(app, session, mode)`
is called by /offer before the remote description is applied, so the session
sees the user's tracks. The heavy parts load on first use: the Silero model when
a first uplink arrives, the recogniser (on its own thread) at the same moment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from httpapi import BadRequest, ok, read_json
from listen.funasr_ws import register as register_funasr_socket
from listen.asr import ASRWorker, create_backend
from listen.echo import EchoCanceller, wanted
from listen.router import SessionListening
from listen.settings import LISTEN_MODES, ListenConfigError, ListenSettings
from listen.smartturn import TurnModel, installed as turn_model_installed
from listen.vad import SileroModel

if TYPE_CHECKING:
    from server.context import ServerContext
    from session import Session

logger = logging.getLogger(__name__)


class ListenService:
    def __init__(self, settings: ListenSettings, chat_problem: Callable[[], str | None], echo_cancel: str = "auto"):
        self.settings = settings
        self.echo_cancel = echo_cancel  # --echo-cancel: auto, on or off
        self.chat_problem = chat_problem
        self.default_mode = settings.default_mode or ("echo" if chat_problem() else "chat")
        self._vad: SileroModel | None = None
        self._vad_lock = asyncio.Lock()
        self.turn = settings.turn or ("smart" if turn_model_installed() else "silence")
        self._turn_model: TurnModel | None = None
        self._asr: ASRWorker | None = None
        self.on_transcribed: Callable[[float], None] | None = None  # end of utterance -> text, seconds (metrics)
        self.sessions: dict[str, SessionListening] = {}

    def mode_from(self, body: dict[str, Any]) -> str:
        """The `listen` value of a request body (its default when absent); BadRequest when invalid."""
        mode = body.get("listen")
        if mode is None:
            return self.default_mode
        if mode not in LISTEN_MODES:
            raise BadRequest(f"'listen' must be one of {', '.join(LISTEN_MODES)}")
        return mode

    async def vad_model(self) -> SileroModel:
        async with self._vad_lock:
            if self._vad is None:
                self._vad = await asyncio.get_running_loop().run_in_executor(None, SileroModel)
                logger.info("listen: Silero VAD loaded (onnxruntime)")
        return self._vad

    async def turn_model(self) -> TurnModel | None:
        """The Smart Turn model (loaded once, at start-up) with --turn smart; None with --turn silence."""
        if self.turn != "smart":
            return None
        async with self._vad_lock:
            if self._turn_model is None:
                self._turn_model = await asyncio.get_running_loop().run_in_executor(None, TurnModel)
        return self._turn_model

    def asr_worker(self) -> ASRWorker:
        if self._asr is None:
            self._asr = ASRWorker(lambda: create_backend(self.settings), on_done=self.on_transcribed)
        return self._asr

    def attach(self, session: "Session", mode: str, client_cancels: bool | None = None) -> SessionListening:
        """`client_cancels`: what the client said of its own echo cancellation (None: nothing)."""
        listening = SessionListening(self, session, mode)
        if self.echo_cancel != "off":
            listening.echo = self._canceller(session, client_cancels)
        self.sessions[session.id] = listening

        async def detach() -> None:
            self.sessions.pop(session.id, None)
            session.player.far_end = None
            await listening.close()

        session.add_closer(detach)
        return listening

    def _canceller(self, session: "Session", client_cancels: bool | None) -> EchoCanceller:
        canceller = EchoCanceller(enabled=wanted(self.echo_cancel, client_cancels))
        session.player.far_end = canceller.reference
        canceller.on_stats = lambda stats: session.events.publish_threadsafe({"type": "echo", **stats})
        return canceller

    def client_reports(self, listening: SessionListening, client_cancels: bool) -> None:
        """The client told (again) whether its microphone cancels echo, e.g. once the page's mic is on."""
        if listening.echo is not None:
            listening.echo.enabled = wanted(self.echo_cancel, client_cancels)

    def echo_stats(self) -> dict[str, dict]:
        """Session tag -> the canceller's figures, for the sessions that cancel echo (metrics)."""
        return {listening.session.tag: listening.echo.stats() for listening in list(self.sessions.values())
                if listening.echo is not None and listening.echo.enabled}

    async def close(self) -> None:
        if self._asr is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._asr.close)


LISTEN_KEY = web.AppKey("listen", ListenService)


def client_cancels_from(body: dict[str, Any]) -> bool | None:
    """The `echo_cancellation` a client reports of its microphone (the page: getSettings()); None when absent."""
    value = body.get("echo_cancellation")
    if value is not None and not isinstance(value, bool):
        raise BadRequest("'echo_cancellation' must be true or false (what the microphone's getSettings() says)")
    return value


def register(app: web.Application, ctx: "ServerContext") -> None:
    """Create the server's ListenService (from the flags) and its routes."""
    settings = ListenSettings.from_args(ctx.args)
    problem = settings.problem()
    if not problem and settings.turn == "smart" and not turn_model_installed():
        problem = "--turn smart needs the pipecat-ai package (pip install -r requirements.txt), or pass --turn silence"
    if problem:
        raise ListenConfigError(problem)
    service = ListenService(settings, ctx.llm.settings.problem, ctx.args.echo_cancel)
    session_from = ctx.session_from
    app[LISTEN_KEY] = service

    async def switch_mode(request: web.Request) -> web.Response:
        body = await read_json(request)
        session = session_from(body)
        client_cancels = client_cancels_from(body)
        if "listen" not in body and client_cancels is None:
            raise BadRequest("'listen' is required: one of " + ", ".join(LISTEN_MODES))
        mode = service.mode_from(body) if "listen" in body else None
        listening = service.sessions.get(session.id)
        if listening is None:
            raise BadRequest("this session is not listening", status=409)
        if client_cancels is not None:
            service.client_reports(listening, client_cancels)
        if mode is not None:
            listening.set_mode(mode)
        data = {"listen": listening.mode}
        if client_cancels is not None:
            data["echo_cancel"] = listening.echo is not None and listening.echo.enabled
        return ok(data=data)

    async def preload(app: web.Application) -> None:
        """Load the VAD before the first offer: the uplink buffers only about a second of audio,
        so a model still loading when the user starts talking would cost their first words."""
        await service.vad_model()
        await service.turn_model()
        logger.info("listen: turns end by %s", "the Smart Turn model" if service.turn == "smart" else "silence")

    async def shutdown(app: web.Application) -> None:
        await service.close()

    app.router.add_post("/listen", switch_mode)
    register_funasr_socket(app, service.asr_worker)
    app.on_startup.append(preload)
    app.on_cleanup.append(shutdown)


def attach(app: web.Application, session: "Session", mode: str, client_cancels: bool | None = None) -> SessionListening:
    return app[LISTEN_KEY].attach(session, mode, client_cancels)


def mode_from(app: web.Application, body: dict[str, Any]) -> str:
    return app[LISTEN_KEY].mode_from(body)
