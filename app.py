"""HTTP + WebRTC server: flags, routes and the session lifecycle.

Run `python app.py --help` for the flags. The API is LiveTalking-compatible
(see DESIGN.md); every error answers `{code: -1, msg}` with a 4xx/5xx status.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from stage import actions
from stage import avatarswitch
from stage import recorder
from server import events as sse
from server import admin as adminapi
from server import avatartasks
from server import ltcompat
from server import webfiles
from avatars.store import AvatarError, AvatarStore, check_avatar_id
from basereal import EngineConfig
from engines import MODEL_CHOICES, EngineFactory, EngineUnavailable, resolve_model
from speech.audiofile import AudioDecodeError, AudioTooLong, decode_audio
import listen
from httpapi import BODY_READ_TIMEOUT_S, BODY_TIMEOUT_KEY, BadRequest, error_middleware, ok, optional_bool, read_json, require_str
from media import SUPPORTED_FPS
from llm import LLMClient, LLMError, LLMSettings
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, MuseTalkSettings, right_context
from musetalk.settings import add_arguments as add_musetalk_arguments
from server.peeractivity import seconds_since_peer_report
import ops
from ops.broadcast import TRANSPORTS
from ops.metrics import Metrics
from server.sdpcheck import OfferRejected, check_offer_sdp
from server.security import AUTH_TOKEN_ENV, AccessPolicy, RedactingAccessLogger, public
from session import Session, SessionLimitError, SessionRegistry
from speech.budget import DEFAULT_SPEECH_BUDGET_S, SpeechBudget, SpeechBudgetFull
from ttsreal import TTS_CHOICES, QueueFull, TTSFactory, TTSSettings
from tts import cloning
from tts.netloop import DEFAULT_FIRST_PIECE_S
from tts.base import TTSError
from tts.reference import resolve_reference

logger = logging.getLogger("app")

ROOT = Path(__file__).resolve().parent
WEB_DIR = ROOT / "web"
DEFAULT_AVATAR_ID = "default"
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_PENDING_PER_CLIENT = 4
MAX_UPLOADS_AT_ONCE = 4  # uploads being received or decoded in the whole process
UPLOAD_READ_TIMEOUT_S = 60.0
REAPER_INTERVAL_S = 1.0
MAX_SDP_CHARS = 100_000
MAX_TEXT_CHARS = 20_000
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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Real-time talking avatar server (WebRTC).")
    parser.add_argument("--transport", choices=TRANSPORTS, default="webrtc",
                        help="rtmp/whip: also push one session (id --push-session-id) to --push-url")
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
                        help="close a session after this many seconds without a request, heartbeat or RTCP report from "
                             "its peer (0: never)")
    parser.add_argument("--tts", choices=TTS_CHOICES, default="auto",
                        help="speech engine; auto = edgetts when it can be reached, else espeak (offline)")
    parser.add_argument("--voice", default=None, help="TTS voice (espeak: en-us, cmn, ...; edgetts: en-US-AriaNeural, ...)")
    parser.add_argument("--tts-proxy", dest="tts_proxy", default=None, help="HTTP proxy for edgetts")
    parser.add_argument("--tts-base-url", dest="tts_base_url", default=None,
                        help="OpenAI-compatible speech endpoint for --tts openai (e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--tts-model", dest="tts_model", default="tts-1", help="model for --tts openai")
    parser.add_argument("--tts-timeout", dest="tts_timeout", type=positive_float, default=DEFAULT_FIRST_PIECE_S,
                        metavar="SECONDS", help="network TTS: longest wait for the first audio and between pieces "
                                                "(a stuck service ends the sentence with an error event)")
    cloning.add_arguments(parser)
    avatartasks.add_arguments(parser)
    ltcompat.add_arguments(parser)
    parser.add_argument("--llm-base-url", dest="llm_base_url", default=None,
                        help="OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, DashScope...); key from "
                             "OPENAI_API_KEY or DASHSCOPE_API_KEY")
    parser.add_argument("--llm-model", dest="llm_model", default=None)
    parser.add_argument("--llm-system-prompt", dest="llm_system_prompt", default=None,
                        help="system prompt text, or a path to a .txt/.md file holding it")
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=20.0,
                        help="largest /humanaudio upload accepted")
    parser.add_argument("--speech-budget", dest="speech_budget", type=positive_float, default=DEFAULT_SPEECH_BUDGET_S,
                        metavar="SECONDS", help="audio one session may hold queued or playing (uploads); 429 beyond")
    parser.add_argument("--handshake-timeout", dest="handshake_timeout", type=positive_float,
                        default=DEFAULT_HANDSHAKE_TIMEOUT_S, metavar="SECONDS",
                        help="close a session whose WebRTC connection is not up this long after its offer")
    parser.add_argument("--max-pending-per-client", dest="max_pending_per_client", type=int,
                        default=DEFAULT_PENDING_PER_CLIENT,
                        help="sessions one client address may have being built or connecting at once")
    parser.add_argument("--auth-token", dest="auth_token", default=os.environ.get(AUTH_TOKEN_ENV),
                        help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${AUTH_TOKEN_ENV}); "
                             "the page takes it from its URL: /#token=TOKEN")
    parser.add_argument("--body-timeout", dest="body_timeout", type=positive_float, default=BODY_READ_TIMEOUT_S,
                        metavar="SECONDS", help="a request body (JSON) must arrive within this time (408 otherwise)")
    parser.add_argument("--allow-origin", dest="allow_origins", action="append", default=[], metavar="ORIGIN",
                        help="let pages from this origin call the API (CORS), repeatable; '*' allows any")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    parser.add_argument("--log-level", dest="log_level", default="INFO")
    listen.add_arguments(parser)
    actions.add_arguments(parser)
    recorder.add_arguments(parser)
    ops.add_arguments(parser)
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
    access: AccessPolicy
    metrics: Metrics
    background: set[asyncio.Task] = field(default_factory=set)
    uploads_in_progress: int = 0


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
    service = cloning.ServiceSettings(backend, args.tts_server, args.tts_lang, args.tts_sample_rate) \
        if backend in cloning.SERVICES else None
    reference = resolve_reference(args.data_dir, args.ref_file, args.ref_text)
    if reference is not None and reference.audio is not None and service is None:
        raise TTSError(f"--REF_FILE {args.ref_file} is a recording, which only a cloning TTS can use: "
                       f"add --tts {'|'.join(cloning.SERVICES)}")
    return TTSSettings(backend=backend, voice=args.voice, proxy=args.tts_proxy,
                       base_url=args.tts_base_url, model=args.tts_model, timeout_s=args.tts_timeout,
                       service=service, reference=reference)


def llm_settings(args: argparse.Namespace) -> LLMSettings:
    settings = LLMSettings.from_args(args.llm_base_url, args.llm_model, args.llm_system_prompt)
    logger.info("chat: %s", settings.problem() or f"{settings.model} at {settings.base_url}")
    return settings


def context_of(request: web.Request) -> ServerContext:
    return request.app[CONTEXT_KEY]


async def offer(request: web.Request) -> web.Response:
    """Negotiate a session: the SDP is checked first, the engine is built only for a usable offer."""
    ctx = context_of(request)
    body = await read_json(request)
    sdp = require_str(body, "sdp", max_len=MAX_SDP_CHARS)
    if body.get("type") != "offer":
        raise BadRequest("'type' must be \"offer\"")
    listen_mode = listen.mode_from(request.app, body)
    avatar_id = body.get("avatar") or ctx.args.avatar_id
    try:
        check_avatar_id(avatar_id)
        check_offer_sdp(sdp)
    except (AvatarError, OfferRejected) as exc:
        raise BadRequest(str(exc)) from None
    if not ctx.avatars.exists(avatar_id):
        known = ", ".join(ctx.avatars.available()) or "none"
        raise BadRequest(f"unknown avatar {avatar_id!r} (available: {known})", status=404)
    clips = await actions.offer_actions(request, body)
    client = request.remote or "unknown"
    try:
        session_id = ctx.sessions.reserve(client, ctx.args.max_pending_per_client)
    except SessionLimitError as exc:
        raise BadRequest(str(exc), status=exc.status) from None

    session = None
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ctx.args.ice_servers)))
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and others for bad SDP
            raise BadRequest(f"could not negotiate the offer SDP: {str(exc)[:200]}") from None
        session = await build_session(request.app, session_id, avatar_id, pc, client, clips,
                                      reference=(body.get("refaudio"), body.get("reftext")))
        listen.attach(request.app, session, listen_mode)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise BadRequest(f"could not answer the offer SDP: {str(exc)[:200]}") from None
    except BaseException as exc:
        ctx.sessions.release_reservation(client)
        if session is not None:
            await session.close("offer failed")
        else:
            await pc.close()
        if isinstance(exc, AvatarError):  # it exists (checked above) but is not usable by this engine
            raise BadRequest(str(exc), status=422) from None
        raise
    ctx.sessions.add(session)
    ctx.metrics.sessions_started.inc()
    watch_connection(ctx, session)
    logger.info("session %s started (avatar %s, engine %s, %d live)", session.tag, avatar_id, ctx.engines.model, len(ctx.sessions))
    answer = session.pc.localDescription
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "sessionid": session_id})


async def build_session(app: web.Application, session_id: str, avatar_id: str, pc: RTCPeerConnection,
                        client: str, clips=None, reference: tuple[object, object] = (None, None)) -> Session:
    """Engine (with its action clips), TTS (a cloned voice when `reference` names a recording and its text)
    and speech budget; the pc carries the session's two paced tracks."""
    ctx = app[CONTEXT_KEY]
    loop = asyncio.get_running_loop()
    backend = await loop.run_in_executor(None, tts_for_request, ctx, None, None, *reference)
    engine = await loop.run_in_executor(None, ctx.engines.build, avatar_id, session_id)
    await loop.run_in_executor(None, app[actions.LIBRARY_KEY].apply, engine, clips)
    budget = SpeechBudget(ctx.args.speech_budget)
    session = Session(session_id, engine, pc, loop, backend, ctx.llm, budget=budget, client=client,
                      probe=ctx.metrics.probe())
    pc.addTrack(session.player.audio)
    pc.addTrack(session.player.video)
    return session


def watch_connection(ctx: ServerContext, session: Session) -> None:
    pc = session.pc

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        logger.info("session %s connection %s", session.tag, pc.connectionState)
        if pc.connectionState == "connected":
            session.connected = True
        if pc.connectionState == "failed":
            ctx.metrics.error("connection_failed")
        if pc.connectionState in ("failed", "closed"):
            await ctx.sessions.close(session.id, f"connection {pc.connectionState}")

    @pc.on("datachannel")
    def on_channel(channel) -> None:
        session.events.channel = channel

        @channel.on("message")
        def on_message(_message) -> None:
            session.touch()  # any message is a heartbeat


async def reap_sessions(ctx: ServerContext) -> None:
    """Close sessions that did not connect within --handshake-timeout or went quiet for --idle-timeout."""
    while True:
        await asyncio.sleep(REAPER_INTERVAL_S)
        await close_stale_sessions(ctx)  # a call of its own, so no session outlives it in this frame


async def close_stale_sessions(ctx: ServerContext) -> None:
    now = time.monotonic()
    for session in ctx.sessions.all():
        if session.broadcast:
            continue  # pushed to a media server: no listener of its own to wait for
        age = now - session.created
        if not session.connected and age > ctx.args.handshake_timeout:
            await ctx.sessions.close(session.id, f"not connected after {ctx.args.handshake_timeout:g} s")
        elif ctx.args.idle_timeout > 0 and now - session.last_activity > ctx.args.idle_timeout:
            heard = await seconds_since_peer_report(session.pc)
            if heard is not None and heard < ctx.args.idle_timeout:
                session.touch()  # a live peer (its RTCP reports arrive) is not idle, heartbeat or not
            else:
                await ctx.sessions.close(session.id, f"idle for {ctx.args.idle_timeout:.0f} s")


@public
async def client_config(request: web.Request) -> web.Response:
    """What the page needs to connect: ICE servers and which engine runs."""
    ctx = context_of(request)
    ice = [{"urls": s.urls, **({"username": s.username, "credential": s.credential} if s.username else {})}
           for s in ctx.args.ice_servers]
    chat_problem = ctx.llm.settings.problem()
    return ok(iceServers=ice, model=ctx.engines.model, fps=ctx.args.fps, auth=ctx.access.auth_token is not None,
              avatar=ctx.args.avatar_id, avatars=ctx.avatars.available(),
              chat=chat_problem is None, chat_problem=chat_problem)


@public
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def session_from(ctx: ServerContext, body: dict) -> Session:
    body = ltcompat.sessionid_as_text(body, ctx.args.numeric_session_ids)
    session_id = require_str(body, "sessionid", max_len=64)
    session = ctx.sessions.get(session_id)
    if session is None:
        raise BadRequest(f"unknown sessionid {session_id!r}: post /offer first", status=404)
    session.touch()
    return session


async def is_speaking(request: web.Request) -> web.Response:
    session = session_from(context_of(request), await read_json(request))
    return ok(data=session.speaking)


def tts_for_request(ctx: ServerContext, backend: str | None, voice: str | None, ref_file: object = None,
                    ref_text: object = None):
    """A TTS backend for a client's choice; a reference voice must lie inside data/ (blocking: stats it)."""
    try:
        reference = resolve_reference(ctx.args.data_dir, ref_file, ref_text)
        return ctx.tts.create(backend, voice, reference)
    except TTSError as exc:
        raise BadRequest(str(exc)) from None


def requested_backend(ctx: ServerContext, session: Session, body: dict):
    """The session's TTS backend, or one the request names: `tts: "espeak"` or
    `{backend, voice, ref_file, ref_text}` (a cloned voice, LiveTalking's form)."""
    choice = body.get("tts")
    if choice is None:
        return session.tts_backend
    if isinstance(choice, str):
        choice = {"backend": choice}
    if not isinstance(choice, dict) or not all(isinstance(choice.get(k, ""), str) for k in ("backend", "voice")):
        raise BadRequest("'tts' must be a backend name or {\"backend\": name, \"voice\": voice, "
                         "\"ref_file\": path, \"ref_text\": text}")
    return tts_for_request(ctx, choice.get("backend") or None, choice.get("voice") or None,
                           choice.get("ref_file"), choice.get("ref_text"))


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
    if session.probe is not None:
        session.probe.text_received()
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
    """Play an uploaded audio file (any format FFmpeg decodes) through the avatar.

    What an upload may cost is bounded three ways: its bytes (--max-upload-mb),
    the seconds of audio it decodes to (the session's --speech-budget: decoding
    stops there), and the uploads in progress in the whole process.
    """
    ctx = context_of(request)
    limit = int(ctx.args.max_upload_mb * 1024 * 1024)
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise BadRequest(f"upload over the {ctx.args.max_upload_mb:g} MB limit", status=413)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with fields 'sessionid' and 'file'")
    if ctx.uploads_in_progress >= MAX_UPLOADS_AT_ONCE:
        raise BadRequest(f"{MAX_UPLOADS_AT_ONCE} uploads are already being processed: try again in a moment", status=429)
    ctx.uploads_in_progress += 1
    try:
        try:
            fields, data, filename = await asyncio.wait_for(read_upload(request, limit), UPLOAD_READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BadRequest(f"upload not received within {UPLOAD_READ_TIMEOUT_S:g} s", status=408) from None
        session = session_from(ctx, fields)
        if not data:
            raise BadRequest("field 'file' is missing or empty")
        budget = session.tts.budget
        allowed = budget.remaining_s()
        if allowed < 1.0:
            raise BadRequest(f"this session already holds {budget.held_s:.0f} s of audio (--speech-budget "
                             f"{budget.limit_s:g} s): wait for it to play or interrupt it", status=429)
        try:
            audio = await asyncio.get_running_loop().run_in_executor(None, decode_audio, data, allowed)
        except AudioTooLong:
            status = 413 if allowed >= budget.limit_s else 429
            raise BadRequest(f"the upload plays longer than the {allowed:.0f} s this session may still hold "
                             f"(--speech-budget {budget.limit_s:g} s): send shorter audio or interrupt", status=status) from None
        except AudioDecodeError as exc:
            raise BadRequest(str(exc), status=415) from None
        del data
        if session.probe is not None:
            session.probe.text_received()
        try:
            utterance_id = session.tts.play(audio, filename)
        except (QueueFull, SpeechBudgetFull) as exc:
            raise BadRequest(str(exc), status=429) from None
        return ok(data={"utterance": utterance_id, "seconds": round(audio.size / 16000, 3)})
    finally:
        ctx.uploads_in_progress -= 1


async def read_upload(request: web.Request, limit: int) -> tuple[dict[str, str], bytes | None, str]:
    """The form's sessionid, the file's bytes (at most `limit`) and its name; a malformed form is a 400."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = "upload"
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "file":
                filename = (part.filename or filename)[:100]
                chunks, size = [], 0
                while piece := await part.read_chunk(256 * 1024):
                    size += len(piece)
                    if size > limit:
                        raise BadRequest(f"upload over the {limit / 1024 / 1024:g} MB limit", status=413)
                    chunks.append(piece)
                data = b"".join(chunks)
            elif part.name == "sessionid":
                fields["sessionid"] = (await part.read_chunk(128)).decode(errors="replace").strip()[:100]
                await part.release()
            else:
                await part.release()
    except BadRequest:
        raise
    except (ValueError, AssertionError, AttributeError, KeyError, UnicodeError, aiohttp.ClientPayloadError) as exc:
        raise BadRequest(f"malformed multipart body ({type(exc).__name__}): send multipart/form-data with "
                         "fields 'sessionid' and 'file'") from None
    return fields, data, filename


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one session: speech start/end at playout, errors, close."""
    session = session_from(context_of(request), {"sessionid": request.query.get("sessionid")})
    return await sse.stream_events(request, session, lambda event: event)


def create_app(args: argparse.Namespace, engines: EngineFactory | None = None) -> web.Application:
    avatars = AvatarStore(args.data_dir / "avatars")
    if engines is None:
        config = EngineConfig(fps=args.fps, batch_size=args.batch_size)
        musetalk = MuseTalkSettings(right_chunks=args.right_context, channels_last=args.musetalk_channels_last,
                                    compile=args.musetalk_compile)
        engines = EngineFactory(resolve_model(args.model, args.models_dir), avatars, config, args.models_dir, musetalk)
    access = AccessPolicy(args.auth_token, args.allow_origins)
    metrics = Metrics(engines.model)
    ctx = ServerContext(args=args, avatars=avatars, engines=engines,
                        sessions=SessionRegistry(args.max_session, args.worker_id),
                        tts=TTSFactory(tts_settings(args)), llm=LLMClient(llm_settings(args)), access=access,
                        metrics=metrics)
    engines.observe_batches(metrics.observe_batch)
    ctx.llm.on_first_token = metrics.observe_llm_first_token
    if args.numeric_session_ids:
        ctx.sessions.new_id = ltcompat.numeric_session_id
    if args.ice_hosts:
        restrict_ice_hosts(args.ice_hosts)

    upload_limit = int(args.max_upload_mb * 1024 * 1024) + 1024 * 1024
    app = web.Application(middlewares=[error_middleware, access.middleware], client_max_size=upload_limit)
    app[CONTEXT_KEY] = ctx
    app[BODY_TIMEOUT_KEY] = args.body_timeout
    app.router.add_get("/", index)
    app.router.add_get("/config", client_config)
    app.router.add_post("/offer", offer)
    app.router.add_post("/is_speaking", is_speaking)
    app.router.add_post("/human", human)
    app.router.add_post("/humanaudio", human_audio)
    app.router.add_post("/interrupt_talk", interrupt_talk)
    app.router.add_get("/events", events)
    app.router.add_static("/web", WEB_DIR)
    listen.register(app, listen.ListenSettings.from_args(args), ctx.llm.settings.problem, lambda body: session_from(ctx, body))
    actions.register_routes(app, args, lambda body: session_from(ctx, body))
    recorder.register_routes(app, args, lambda body: session_from(ctx, body))
    sse.register_routes(app, lambda body: session_from(ctx, body))
    avatarswitch.register_routes(app, avatars, lambda body: session_from(ctx, body))
    avatartasks.setup(app, args, avatars)
    webfiles.register_routes(app, WEB_DIR)
    adminapi.register_routes(app, args, ctx.sessions)
    ops.register(app, ctx, build_session)

    async def start_reaper(app: web.Application) -> None:
        task = asyncio.create_task(reap_sessions(ctx), name="session-reaper")
        ctx.background.add(task)

    async def shutdown(app: web.Application) -> None:
        for task in ctx.background:
            task.cancel()
        await ctx.sessions.close_all("server shutdown")
        await ctx.llm.close()
        await asyncio.get_running_loop().run_in_executor(None, ctx.engines.close)
        await asyncio.get_running_loop().run_in_executor(None, ctx.tts.close)

    app.on_startup.append(start_reaper)
    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := ops.check_arguments(args):
        parser.error(problem)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(args)
    except (EngineUnavailable, TTSError, LLMError, listen.ListenConfigError, ValueError) as exc:  # ActionConfigError is a ValueError
        logger.error("%s", exc)
        return 2
    ctx = app[CONTEXT_KEY]
    if not ctx.avatars.exists(args.avatar_id):
        logger.error("avatar %r not found in %s: build it with `python genavatar.py --avatar_id %s --image PHOTO`"
                     " (the default one: `python genavatar.py --default`)", args.avatar_id, ctx.avatars.root, args.avatar_id)
        return 2
    try:
        ctx.engines.prepare(args.avatar_id)  # a LiveTalking folder gets its landmarks now, not at the first offer
    except AvatarError as exc:
        logger.error("%s", exc)
        return 2
    ctx.access.warn_if_exposed(args.host)
    logger.info("engine: %s; open http://%s:%d/", ctx.engines.model, args.host, args.listenport)
    ops.run(app, ctx, access_log_class=RedactingAccessLogger)  # until SIGTERM/SIGINT, then drains for --drain-timeout
    return 0


if __name__ == "__main__":
    sys.exit(main())
