"""HTTP + WebRTC server: flags, routes and the session lifecycle.

Run `python app.py --help` for the flags. The API is LiveTalking-compatible
(see DESIGN.md); every error answers `{code: -1, msg}` with a 4xx/5xx status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from avatar import AvatarError, AvatarStore, check_avatar_id
from basereal import EngineConfig
from engines import MODEL_CHOICES, EngineFactory, EngineUnavailable, resolve_model
from audiofile import AudioDecodeError, decode_audio
from httpapi import BadRequest, error_middleware, ok, optional_bool, read_json, require_str
from media import SUPPORTED_FPS
from llm import LLMClient, LLMError, LLMSettings
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, MuseTalkSettings, right_context
from musetalk.settings import add_arguments as add_musetalk_arguments
from session import Session, SessionLimitError, SessionRegistry, TooManySubscribers
from ttsreal import TTS_CHOICES, QueueFull, TTSFactory, TTSSettings
from tts.base import TTSError

logger = logging.getLogger("app")

ROOT = Path(__file__).resolve().parent
WEB_DIR = ROOT / "web"
DEFAULT_AVATAR_ID = "default"
CONNECT_TIMEOUT_S = 30.0
REAPER_INTERVAL_S = 1.0
MAX_SDP_CHARS = 100_000
MAX_TEXT_CHARS = 20_000
SSE_KEEPALIVE_S = 15.0
SSE_POLL_S = 0.5  # how often an idle event stream checks that its listener is still there
ICE_URL_PATTERN = re.compile(r"^(stun|stuns|turn|turns):(?:(?P<user>[^:@/]+):(?P<cred>[^@/]+)@)?(?P<rest>[^@\s]+)$")


def parse_ice_server(text: str) -> RTCIceServer:
    """`stun:host:port` or `turn:USER:SECRET@host:port?transport=udp` -> RTCIceServer."""
    match = ICE_URL_PATTERN.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"bad ICE server {text!r}: use stun:HOST:PORT or turn:USER:SECRET@HOST:PORT"
        )
    url = f"{match.group(1)}:{match.group('rest')}"
    if match.group(1).startswith("turn") and not match.group("user"):
        raise argparse.ArgumentTypeError(f"TURN server {text!r} needs credentials: turn:USER:SECRET@HOST:PORT")
    return RTCIceServer(urls=url, username=match.group("user"), credential=match.group("cred"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Real-time talking avatar server (WebRTC).")
    parser.add_argument("--transport", choices=["webrtc"], default="webrtc")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto",
                        help="lip-sync engine; auto = musetalk when its weights are in models/, else lite")
    parser.add_argument("--avatar_id", default=DEFAULT_AVATAR_ID, help="avatar used when an offer names none")
    parser.add_argument("--listenport", type=int, default=8010)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the LAN)")
    parser.add_argument("--max_session", type=int, default=8, help="concurrent sessions allowed")
    parser.add_argument("--fps", type=int, default=25, choices=SUPPORTED_FPS)
    parser.add_argument("--batch_size", type=int, default=8, help="frames per inference batch (musetalk)")
    parser.add_argument("-r", "--right-context", dest="right_context", type=right_context, default=DEFAULT_CONTEXT_CHUNKS,
                        help="musetalk: future audio whisper sees after each batch, in 20 ms chunks (adds that latency)")
    add_musetalk_arguments(parser)
    parser.add_argument("--ice-server", dest="ice_servers", action="append", type=parse_ice_server, default=[],
                        metavar="URL", help="STUN/TURN server, repeatable: stun:HOST:PORT, turn:USER:SECRET@HOST:PORT")
    parser.add_argument("--ice-host", dest="ice_hosts", action="append", default=[], metavar="ADDR",
                        help="offer only these local addresses as ICE host candidates (repeatable)")
    parser.add_argument("--idle-timeout", dest="idle_timeout", type=float, default=600.0,
                        help="close a session after this many seconds without a request or heartbeat (0: never)")
    parser.add_argument("--tts", choices=TTS_CHOICES, default="auto",
                        help="speech engine; auto = edgetts when it can be reached, else espeak (offline)")
    parser.add_argument("--voice", default=None, help="TTS voice (espeak: en-us, cmn, ...; edgetts: en-US-AriaNeural, ...)")
    parser.add_argument("--tts-proxy", dest="tts_proxy", default=None, help="HTTP proxy for edgetts")
    parser.add_argument("--tts-base-url", dest="tts_base_url", default=None,
                        help="OpenAI-compatible speech endpoint for --tts openai (e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--tts-model", dest="tts_model", default="tts-1", help="model for --tts openai")
    parser.add_argument("--llm-base-url", dest="llm_base_url", default=None,
                        help="OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, DashScope...); key from "
                             "OPENAI_API_KEY or DASHSCOPE_API_KEY")
    parser.add_argument("--llm-model", dest="llm_model", default=None)
    parser.add_argument("--llm-system-prompt", dest="llm_system_prompt", default=None,
                        help="system prompt text, or a path to a .txt/.md file holding it")
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=20.0,
                        help="largest /humanaudio upload accepted")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    parser.add_argument("--log-level", dest="log_level", default="INFO")
    return parser


@dataclass
class ServerContext:
    """Process-wide state handed to the route handlers (no module globals)."""

    args: argparse.Namespace
    avatars: AvatarStore
    engines: EngineFactory
    sessions: SessionRegistry
    tts: TTSFactory
    llm: LLMClient
    background: set[asyncio.Task] = field(default_factory=set)


CONTEXT_KEY = web.AppKey("context", ServerContext)


def restrict_ice_hosts(addresses: list[str]) -> None:
    """Make aioice gather host candidates only on the given addresses.

    aioice offers every interface (docker bridges included) and never loopback;
    this is the documented way to choose (it patches aioice, process-wide).
    """
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(chosen)


def tts_settings(args: argparse.Namespace) -> TTSSettings:
    """--tts auto picks edgetts when Microsoft's service answers, else the offline espeak."""
    backend = args.tts
    if backend == "auto":
        from tts.edge import reachable

        backend = "edgetts" if reachable(proxy=args.tts_proxy) else "espeak"
        logger.info("tts auto: %s", "edgetts (service reachable)" if backend == "edgetts" else "espeak (offline)")
    if backend == "openai" and not args.tts_base_url:
        raise TTSError("--tts openai needs --tts-base-url (an OpenAI-compatible /v1 endpoint)")
    return TTSSettings(backend=backend, voice=args.voice, proxy=args.tts_proxy,
                       base_url=args.tts_base_url, model=args.tts_model)


def llm_settings(args: argparse.Namespace) -> LLMSettings:
    settings = LLMSettings.from_args(args.llm_base_url, args.llm_model, args.llm_system_prompt)
    logger.info("chat: %s", settings.problem() or f"{settings.model} at {settings.base_url}")
    return settings


def context_of(request: web.Request) -> ServerContext:
    return request.app[CONTEXT_KEY]


async def offer(request: web.Request) -> web.Response:
    ctx = context_of(request)
    body = await read_json(request)
    sdp = require_str(body, "sdp", max_len=MAX_SDP_CHARS)
    if body.get("type") != "offer":
        raise BadRequest("'type' must be \"offer\"")
    avatar_id = body.get("avatar") or ctx.args.avatar_id
    try:
        check_avatar_id(avatar_id)
    except AvatarError as exc:
        raise BadRequest(str(exc)) from None
    if not ctx.avatars.exists(avatar_id):
        known = ", ".join(ctx.avatars.available()) or "none"
        raise BadRequest(f"unknown avatar {avatar_id!r} (available: {known})", status=404)
    try:
        session_id = ctx.sessions.reserve()
    except SessionLimitError as exc:
        raise BadRequest(str(exc), status=503) from None

    loop = asyncio.get_running_loop()
    session = None
    try:
        backend = await loop.run_in_executor(None, ctx.tts.create)
        engine = await loop.run_in_executor(None, ctx.engines.build, avatar_id, session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ctx.args.ice_servers)))
        session = Session(session_id, engine, pc, loop, backend, ctx.llm)
        pc.addTrack(session.player.audio)
        pc.addTrack(session.player.video)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc raises ValueError and others for bad SDP
            raise BadRequest(f"could not negotiate the offer SDP: {exc}") from None
    except BaseException as exc:
        ctx.sessions.release_reservation()
        if session is not None:
            await session.close("offer failed")
        if isinstance(exc, AvatarError):  # it exists (checked above) but is not usable by this engine
            raise BadRequest(str(exc), status=422) from None
        raise
    ctx.sessions.add(session)
    watch_connection(ctx, session)
    logger.info("session %s started (avatar %s, engine %s, %d live)", session_id, avatar_id, ctx.engines.model, len(ctx.sessions))
    answer = session.pc.localDescription
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "sessionid": session_id})


def watch_connection(ctx: ServerContext, session: Session) -> None:
    pc = session.pc

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        logger.info("session %s connection %s", session.id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await ctx.sessions.close(session.id, f"connection {pc.connectionState}")

    @pc.on("datachannel")
    def on_channel(channel) -> None:
        session.events.channel = channel

        @channel.on("message")
        def on_message(_message) -> None:
            session.touch()  # any message is a heartbeat


async def reap_sessions(ctx: ServerContext) -> None:
    """Close sessions that never connected or went quiet for --idle-timeout."""
    while True:
        await asyncio.sleep(REAPER_INTERVAL_S)
        await close_stale_sessions(ctx)  # a call of its own, so no session outlives it in this frame


async def close_stale_sessions(ctx: ServerContext) -> None:
    now = time.monotonic()
    for session in ctx.sessions.all():
        age = now - session.created
        if session.pc.connectionState != "connected" and age > CONNECT_TIMEOUT_S:
            await ctx.sessions.close(session.id, f"not connected after {CONNECT_TIMEOUT_S:.0f} s")
        elif ctx.args.idle_timeout > 0 and now - session.last_activity > ctx.args.idle_timeout:
            await ctx.sessions.close(session.id, f"idle for {ctx.args.idle_timeout:.0f} s")


async def client_config(request: web.Request) -> web.Response:
    """What the page needs to connect: ICE servers and which engine runs."""
    ctx = context_of(request)
    ice = [{"urls": s.urls, **({"username": s.username, "credential": s.credential} if s.username else {})}
           for s in ctx.args.ice_servers]
    return ok(iceServers=ice, model=ctx.engines.model, fps=ctx.args.fps,
              avatar=ctx.args.avatar_id, avatars=ctx.avatars.available())


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def session_from(ctx: ServerContext, body: dict) -> Session:
    session_id = require_str(body, "sessionid", max_len=64)
    session = ctx.sessions.get(session_id)
    if session is None:
        raise BadRequest(f"unknown sessionid {session_id!r}: post /offer first", status=404)
    session.touch()
    return session


async def is_speaking(request: web.Request) -> web.Response:
    session = session_from(context_of(request), await read_json(request))
    return ok(data=session.speaking)


def requested_backend(ctx: ServerContext, session: Session, body: dict):
    """The session's TTS backend, or one the request names: `tts: "espeak"` or `{backend, voice}`."""
    choice = body.get("tts")
    if choice is None:
        return session.tts_backend
    if isinstance(choice, str):
        choice = {"backend": choice}
    if not isinstance(choice, dict) or not all(isinstance(choice.get(k, ""), str) for k in ("backend", "voice")):
        raise BadRequest("'tts' must be a backend name or {\"backend\": name, \"voice\": voice}")
    try:
        return ctx.tts.create(choice.get("backend") or None, choice.get("voice") or None)
    except TTSError as exc:
        raise BadRequest(str(exc)) from None


async def human(request: web.Request) -> web.Response:
    """Speak text (echo) or answer it (chat); `interrupt: true` first silences current speech."""
    ctx = context_of(request)
    body = await read_json(request)
    session = session_from(ctx, body)
    text = require_str(body, "text", max_len=MAX_TEXT_CHARS)
    kind = body.get("type", "echo")
    if kind not in ("echo", "chat"):
        raise BadRequest("'type' must be \"echo\" or \"chat\"")
    interrupt = optional_bool(body, "interrupt")
    loop = asyncio.get_running_loop()
    backend = await loop.run_in_executor(None, requested_backend, ctx, session, body)
    if interrupt:
        session.interrupt()
    if kind == "chat":
        problem = ctx.llm.settings.problem()
        if problem:
            raise BadRequest(problem, status=503)
        session.chat(text, backend)
        return ok(data={"chat": True})
    try:
        utterance_id, sentences = session.tts.say(text, backend)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except QueueFull as exc:
        raise BadRequest(str(exc), status=429) from None
    return ok(data={"utterance": utterance_id, "sentences": sentences})


async def interrupt_talk(request: web.Request) -> web.Response:
    session = session_from(context_of(request), await read_json(request))
    epoch = session.interrupt()
    return ok(data={"epoch": epoch})


async def human_audio(request: web.Request) -> web.Response:
    """Play an uploaded audio file (any format FFmpeg decodes) through the avatar."""
    ctx = context_of(request)
    limit = int(ctx.args.max_upload_mb * 1024 * 1024)
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise BadRequest(f"upload over the {ctx.args.max_upload_mb:g} MB limit", status=413)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with fields 'sessionid' and 'file'")
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = "upload"
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "file":
            filename = part.filename or filename
            chunks, size = [], 0
            while piece := await part.read_chunk(256 * 1024):
                size += len(piece)
                if size > limit:
                    raise BadRequest(f"upload over the {ctx.args.max_upload_mb:g} MB limit", status=413)
                chunks.append(piece)
            data = b"".join(chunks)
        elif part.name == "sessionid":
            fields["sessionid"] = (await part.read(decode=True)).decode(errors="replace")[:100]
        else:
            await part.release()
    session = session_from(ctx, fields)
    if not data:
        raise BadRequest("field 'file' is missing or empty")
    try:
        audio = await asyncio.get_running_loop().run_in_executor(None, decode_audio, data)
    except AudioDecodeError as exc:
        raise BadRequest(str(exc), status=415) from None
    try:
        utterance_id = session.tts.play(audio, filename)
    except QueueFull as exc:
        raise BadRequest(str(exc), status=429) from None
    return ok(data={"utterance": utterance_id, "seconds": round(audio.size / 16000, 3)})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one session: speech start/end at playout, errors, close."""
    ctx = context_of(request)
    session = session_from(ctx, {"sessionid": request.query.get("sessionid")})
    try:
        queue = session.events.subscribe()
    except TooManySubscribers as exc:
        raise BadRequest(str(exc), status=429) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        last_write = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), SSE_POLL_S)
            except asyncio.TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the listener hung up: free its slot now, not at the next write
                if time.monotonic() - last_write >= SSE_KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
                continue
            if event is None:
                break
            last_write = time.monotonic()
            session.touch()
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
    except ConnectionResetError:
        pass  # the listener went away
    finally:
        session.events.unsubscribe(queue)
    return response


def create_app(args: argparse.Namespace, engines: EngineFactory | None = None) -> web.Application:
    avatars = AvatarStore(args.data_dir / "avatars")
    if engines is None:
        config = EngineConfig(fps=args.fps, batch_size=args.batch_size)
        musetalk = MuseTalkSettings(right_chunks=args.right_context, channels_last=args.musetalk_channels_last,
                                    compile=args.musetalk_compile)
        engines = EngineFactory(resolve_model(args.model, args.models_dir), avatars, config, args.models_dir, musetalk)
    ctx = ServerContext(args=args, avatars=avatars, engines=engines, sessions=SessionRegistry(args.max_session),
                        tts=TTSFactory(tts_settings(args)), llm=LLMClient(llm_settings(args)))
    if args.ice_hosts:
        restrict_ice_hosts(args.ice_hosts)

    upload_limit = int(args.max_upload_mb * 1024 * 1024) + 1024 * 1024
    app = web.Application(middlewares=[error_middleware], client_max_size=upload_limit)
    app[CONTEXT_KEY] = ctx
    app.router.add_get("/", index)
    app.router.add_get("/config", client_config)
    app.router.add_post("/offer", offer)
    app.router.add_post("/is_speaking", is_speaking)
    app.router.add_post("/human", human)
    app.router.add_post("/humanaudio", human_audio)
    app.router.add_post("/interrupt_talk", interrupt_talk)
    app.router.add_get("/events", events)
    app.router.add_static("/web", WEB_DIR)

    async def start_reaper(app: web.Application) -> None:
        task = asyncio.create_task(reap_sessions(ctx), name="session-reaper")
        ctx.background.add(task)

    async def shutdown(app: web.Application) -> None:
        for task in ctx.background:
            task.cancel()
        await ctx.sessions.close_all("server shutdown")
        await ctx.llm.close()
        await asyncio.get_running_loop().run_in_executor(None, ctx.engines.close)

    app.on_startup.append(start_reaper)
    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(args)
    except (EngineUnavailable, TTSError, LLMError) as exc:
        logger.error("%s", exc)
        return 2
    ctx = app[CONTEXT_KEY]
    if not ctx.avatars.exists(args.avatar_id):
        logger.error("avatar %r not found in %s: build it with `python genavatar.py --avatar_id %s --image PHOTO`"
                     " (the default one: `python genavatar.py --default`)", args.avatar_id, ctx.avatars.root, args.avatar_id)
        return 2
    logger.info("engine: %s; open http://%s:%d/", ctx.engines.model, args.host, args.listenport)
    web.run_app(app, host=args.host, port=args.listenport, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
