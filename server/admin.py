"""LiveTalking's admin routes, in its answer shapes, for this machine or behind the token.

    GET /api/admin/config     data: {config: {...}}: the settings (secrets redacted), with LiveTalking's names
    GET /api/admin/sessions   data: {sessions: [...]}: sessionid, transport, speaking, recording, avatar_id,
                              model, tts, connection, age_s, idle_s

LiveTalking serves both to anyone; its session list hands out every session id,
which lets a stranger drive, record or download other people's sessions. Here:
- with --auth-token, the token middleware guards them like every other route;
- without one, they answer only a request made on this machine (loopback address,
  loopback Host, no proxy's forwarding header: `security.is_local_request`), which is
  how LiveTalking's admin.html, sending no token, is used on the server itself;
  anyone else gets 403 saying how to reach them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from httpapi import BadRequest, ok, redact_url
from server.security import is_local_request

if TYPE_CHECKING:
    from server.context import ServerContext
    from session import Session

SECRET_WORDS = ("token", "key", "secret", "password", "credential")
REDACTED = "***"
NOT_LOCAL_MSG = ("the admin routes answer only requests made on the server itself (http://127.0.0.1:PORT/ or "
                 "http://localhost:PORT/, not through a proxy) while no --auth-token is set: open the page there, "
                 "or start the server with --auth-token and send 'Authorization: Bearer TOKEN'")


def public_settings(args: argparse.Namespace) -> dict:
    """The flags as JSON values, with anything secret-looking replaced."""
    settings: dict = {}
    for name, value in sorted(vars(args).items()):
        if any(word in name.lower() for word in SECRET_WORDS):
            value = REDACTED if value else value
        elif name == "ice_servers":
            value = [server.urls for server in value]  # TURN credentials stay out
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, str):
            value = redact_url(value)  # user:password@, query strings and stream keys stay out
        elif isinstance(value, list):
            value = [redact_url(item) if isinstance(item, str) else item for item in value]
        elif not isinstance(value, (int, float, bool, type(None))):
            value = str(value)
        settings[name] = value
    return settings


def admin_config(ctx: "ServerContext") -> dict:
    """The settings, plus the keys LiveTalking's admin.html shows under its names."""
    config = public_settings(ctx.args)
    config["model"] = ctx.engines.model  # the engine that runs (the flag may say "auto")
    config["REF_FILE"] = ctx.args.ref_file or ""
    return config


def session_entry(session: "Session", transport: str, now: float) -> dict:
    return {
        "sessionid": session.id,
        "transport": transport if session.broadcast else "webrtc",
        "speaking": session.speaking,
        "recording": session.player.schedule.tap is not None,  # only the recorder taps the schedule
        "avatar_id": session.engine.avatar.avatar_id,
        "model": session.engine.name,
        "tts": session.tts_backend.name,
        "connection": session.pc.connectionState,
        "age_s": round(now - session.created, 1),
        "idle_s": round(now - session.last_activity, 1),
    }


def register(app: web.Application, ctx: "ServerContext") -> None:
    args, sessions = ctx.args, ctx.sessions

    def check_access(request: web.Request) -> None:
        if ctx.access.auth_token is None and not is_local_request(request):
            raise BadRequest(NOT_LOCAL_MSG, status=403)

    async def config(request: web.Request) -> web.Response:
        check_access(request)
        return ok(data={"config": admin_config(ctx)})

    async def session_list(request: web.Request) -> web.Response:
        check_access(request)
        now = time.monotonic()
        return ok(data={"sessions": [session_entry(session, args.transport, now) for session in sessions.all()]})

    app.router.add_get("/api/admin/config", config)
    app.router.add_get("/api/admin/sessions", session_list)
