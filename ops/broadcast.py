"""One session broadcast through a media server: `--transport rtmp|whip --push-url URL`.

The session is rendered once, under the fixed id `--push-session-id`, and the
media server serves it to any number of viewers. `/human`, `/interrupt_talk`
and the other endpoints address it by that id like any other session; it counts
against --max_session and is never reaped for having no peer.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection

from httpapi import redact_url

if TYPE_CHECKING:
    from server.context import ServerContext
    from session import Session

logger = logging.getLogger(__name__)

TRANSPORTS = ("webrtc", "rtmp", "whip")
BROADCAST_CLIENT = "broadcast"  # the session's "client address" in the registry
DEFAULT_PUSH_SESSION_ID = "broadcast"
PUSH_URL_SCHEMES = {"rtmp": ("rtmp://", "rtmps://"), "whip": ("http://", "https://")}
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


SessionBuilder = Callable[[web.Application, str, str, RTCPeerConnection, str], Awaitable["Session"]]


class Pusher(Protocol):
    def start(self) -> None: ...
    async def stop(self) -> None: ...


def push_session_id(text: str) -> str:
    if not SESSION_ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"bad session id {text!r}: 1-64 characters of A-Z a-z 0-9 _ -")
    return text


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--transport", choices=TRANSPORTS, default="webrtc",
                       help="rtmp/whip: also push one session (id --push-session-id) to --push-url")
    group.add_argument("--push-url", dest="push_url", default=None,
                       help="where --transport rtmp/whip pushes: rtmp://HOST/APP/STREAM or http(s)://HOST/.../whip")
    group.add_argument("--push-session-id", dest="push_session_id", type=push_session_id,
                       default=DEFAULT_PUSH_SESSION_ID, help="the fixed sessionid of the pushed session")
    group.add_argument("--push-token", dest="push_token", default=None,
                       help="Bearer token the WHIP endpoint asks for")
    group.add_argument("--push-avatar", dest="push_avatar", default=None,
                       help="avatar of the pushed session (default: --avatar_id)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the broadcast flags, or None."""
    if args.transport == "webrtc":
        return None
    if not args.push_url:
        return f"--transport {args.transport} needs --push-url"
    if not args.push_url.startswith(PUSH_URL_SCHEMES[args.transport]):
        return f"--push-url for {args.transport} must start with {' or '.join(PUSH_URL_SCHEMES[args.transport])}"
    return None


class Broadcast:  # stored as app[BROADCAST_KEY] when --transport is rtmp or whip
    """Creates the pushed session at start-up and its pusher; stops the pusher at shutdown."""

    def __init__(self, ctx: "ServerContext", build_session: SessionBuilder):
        self.ctx = ctx
        self._build_session = build_session
        self.session: Session | None = None
        self.pusher: Pusher | None = None

    async def start(self, app: web.Application) -> None:
        args = self.ctx.args
        session_id = self.ctx.sessions.reserve(BROADCAST_CLIENT, session_id=args.push_session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(args.ice_servers)))
        try:
            session = await self._build_session(app, session_id, args.push_avatar or args.avatar_id, pc,
                                                BROADCAST_CLIENT)
        except BaseException:
            self.ctx.sessions.release_reservation(BROADCAST_CLIENT)
            await pc.close()
            raise
        session.broadcast = True
        self.ctx.sessions.add(session)
        self.session = session
        self.pusher = self._make_pusher(session)
        self.pusher.start()
        logger.info("broadcast: session %s pushed over %s to %s", session_id[:8], args.transport,
                    redact_url(args.push_url))

    def _make_pusher(self, session: "Session") -> Pusher:
        args = self.ctx.args
        if args.transport == "rtmp":
            from ops.rtmp import RtmpPusher

            return RtmpPusher(args.push_url, session.player.video, session.player.audio, args.fps)
        from ops.whip import WhipPublisher

        return WhipPublisher(args.push_url, session, list(args.ice_servers), token=args.push_token)

    async def stop(self, app: web.Application) -> None:
        """Stop pushing; the session itself is closed with the others at shutdown."""
        pusher, self.pusher, self.session = self.pusher, None, None  # the app outlives the session
        if pusher is not None:
            await pusher.stop()


BROADCAST_KEY = web.AppKey("broadcast", Broadcast)
