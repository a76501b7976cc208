"""POST /set_avatar: another prepared avatar mid-session, crossfaded, on the same WebRTC tracks.

The new avatar is loaded (shared cache) and prepared for the session's engine
in an executor; the render thread switches at its next frame and the scene
fades from the old avatar's frame. Frames keep the session's first size (the
new avatar is scaled into it, letterboxed), so nothing is renegotiated.

A switch may load an avatar from disk and rig it, so each session may switch at
most once per --set-avatar-interval seconds (429 with the wait otherwise); the
loaded avatars share a cache bounded in bytes (--avatar-cache-mb).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import weakref
from typing import TYPE_CHECKING

from aiohttp import web

from avatars.format import AvatarError, check_avatar_id
from httpapi import BadRequest, ok, read_json

DEFAULT_SWITCH_INTERVAL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set-avatar-interval", dest="set_avatar_interval", type=float,
                        default=DEFAULT_SWITCH_INTERVAL_S, metavar="SECONDS",
                        help="least time between two /set_avatar switches of one session (0: no limit)")
if TYPE_CHECKING:
    from server.context import ServerContext


def register(app: web.Application, ctx: "ServerContext") -> None:
    avatars = ctx.avatars
    interval_s = ctx.args.set_avatar_interval
    last_switch: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # session -> monotonic time of its last

    async def set_avatar(request: web.Request) -> web.Response:
        body = await read_json(request)
        session = ctx.session_from(body)
        avatar_id = body.get("avatar")
        try:
            check_avatar_id(avatar_id)
        except AvatarError as exc:
            raise BadRequest(f"'avatar': {exc}") from None
        if not avatars.exists(avatar_id):
            known = ", ".join(avatars.available()) or "none"
            raise BadRequest(f"unknown avatar {avatar_id!r} (available: {known})", status=404)
        now = time.monotonic()
        wait_s = last_switch.get(session, -interval_s) + interval_s - now
        if wait_s > 0:
            raise BadRequest(f"this session switched avatar less than {interval_s:g} s ago "
                             f"(--set-avatar-interval): try again in {wait_s:.1f} s", status=429)
        last_switch[session] = now  # a second request while this one loads waits too
        engine = session.engine
        loop = asyncio.get_running_loop()
        try:
            avatar = await loop.run_in_executor(None, avatars.get, avatar_id)
            await loop.run_in_executor(None, engine.prepare_avatar, avatar)
        except AvatarError as exc:
            raise BadRequest(str(exc), status=422) from None
        if session.closed:
            raise BadRequest("the session closed while the avatar was loading", status=404)
        engine.switch_avatar(avatar)
        last_switch[session] = time.monotonic()  # the interval counts from the end of a (maybe slow) load
        width, height = engine.output_size
        return ok(data={"avatar": avatar_id, "size": list(avatar.size), "sent_size": [width, height]})

    app.router.add_post("/set_avatar", set_avatar)
