"""The offer path: SDP checks, session assembly, the connection watch and the reaper.

`POST /offer` checks the SDP and the avatar before anything is built, reserves a
slot (per client and in all), builds the session (engine, TTS, speech budget, the
two paced tracks) and answers. Sessions that never connect within
--handshake-timeout or go quiet for --idle-timeout are closed by the reaper.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

import listen
from avatars.format import AvatarError, check_avatar_id
from httpapi import BadRequest, positive_seconds, read_json, require_str
from server.context import CONTEXT_KEY, ServerContext, context_of
from server.peeractivity import seconds_since_peer_report
from server.sdpcheck import OfferRejected, check_offer_sdp
from server.speech import tts_for_request
from session import Session, SessionLimitError
from speech.budget import SpeechBudget
from stage import actions

logger = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_PENDING_PER_CLIENT = 4
DEFAULT_MAX_SESSIONS = 8
REAPER_INTERVAL_S = 1.0
MAX_SDP_CHARS = 100_000
MAX_TTS_NAME_CHARS = 200  # an offer's tts backend or voice name
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-session", "--max_session", dest="max_session", type=int, default=DEFAULT_MAX_SESSIONS,
                        help="concurrent sessions allowed")
    parser.add_argument("--ice-server", dest="ice_servers", action="append", type=parse_ice_server, default=[],
                        metavar="URL", help="STUN/TURN server, repeatable: stun:HOST:PORT, turn:USER:SECRET@HOST:PORT")
    parser.add_argument("--ice-host", dest="ice_hosts", action="append", default=[], metavar="ADDR",
                        help="offer only these local addresses as ICE host candidates (repeatable)")
    parser.add_argument("--idle-timeout", dest="idle_timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help="close a session after this many seconds without a request, heartbeat or RTCP report from "
                             "its peer (0: never)")
    parser.add_argument("--handshake-timeout", dest="handshake_timeout", type=positive_seconds,
                        default=DEFAULT_HANDSHAKE_TIMEOUT_S, metavar="SECONDS",
                        help="close a session whose WebRTC connection is not up this long after its offer")
    parser.add_argument("--max-pending-per-client", dest="max_pending_per_client", type=int,
                        default=DEFAULT_PENDING_PER_CLIENT,
                        help="sessions one client address may have being built or connecting at once")


def restrict_ice_hosts(addresses: list[str]) -> None:
    """Make aioice gather host candidates only on the given addresses.

    aioice offers every interface (docker bridges included) and never loopback;
    this is the documented way to choose (it patches aioice, process-wide).
    """
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(chosen)


def register(app: web.Application, ctx: ServerContext) -> None:
    if ctx.args.ice_hosts:
        restrict_ice_hosts(ctx.args.ice_hosts)
    app.router.add_post("/offer", offer)

    async def start_reaper(app: web.Application) -> None:
        task = asyncio.create_task(reap_sessions(ctx), name="session-reaper")
        ctx.background.add(task)

    app.on_startup.append(start_reaper)


async def offer(request: web.Request) -> web.Response:
    """Negotiate a session: the SDP is checked first, the engine is built only for a usable offer."""
    ctx = context_of(request)
    body = await read_json(request)
    sdp = require_str(body, "sdp", max_len=MAX_SDP_CHARS)
    if body.get("type") != "offer":
        raise BadRequest("'type' must be \"offer\"")
    listen_mode = listen.mode_from(request.app, body)
    client_cancels = listen.client_cancels_from(body)
    tts_choice = tts_choice_of(body)
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
                                      reference=(body.get("refaudio"), body.get("reftext")), tts=tts_choice)
        listen.attach(request.app, session, listen_mode, client_cancels)
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
                        client: str, clips=None, reference: tuple[object, object] = (None, None),
                        tts: tuple[str | None, str | None] = (None, None)) -> Session:
    """Engine (with its action clips), TTS (the offer's choice of backend and voice, or the server's; a cloned
    voice when `reference` names a recording and its text) and speech budget; the pc carries the session's
    two paced tracks."""
    ctx = app[CONTEXT_KEY]
    loop = asyncio.get_running_loop()
    backend = await loop.run_in_executor(None, tts_for_request, ctx, *tts, *reference)
    engine = await loop.run_in_executor(None, ctx.engines.build, avatar_id, session_id)
    await loop.run_in_executor(None, app[actions.LIBRARY_KEY].apply, engine, clips)
    budget = SpeechBudget(ctx.args.speech_budget)
    session = Session(session_id, engine, pc, loop, backend, ctx.llm, budget=budget, client=client,
                      probe=ctx.metrics.probe())
    pc.addTrack(session.player.audio)
    pc.addTrack(session.player.video)
    return session


def tts_choice_of(body: dict) -> tuple[str | None, str | None]:
    """An offer's `tts`: a backend name or {backend, voice} (the page's voice menu); None: the server's."""
    choice = body.get("tts")
    if choice is None:
        return None, None
    if isinstance(choice, str):
        choice = {"backend": choice}
    if not isinstance(choice, dict) or not all(isinstance(choice.get(k) or "", str) and len(choice.get(k) or "") <= MAX_TTS_NAME_CHARS
                                               for k in ("backend", "voice")):
        raise BadRequest("'tts' must be a backend name or {\"backend\": name, \"voice\": voice} (see /config voices)")
    return choice.get("backend") or None, choice.get("voice") or None


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
