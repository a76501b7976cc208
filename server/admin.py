"""LiveTalking's admin routes, only behind --auth-token.

    GET /api/admin/config     the server's settings, secrets redacted
    GET /api/admin/sessions   live sessions: id, connection, age, activity, speaking, avatar, engine

LiveTalking serves both to anyone; its session list hands out every session id,
which lets a stranger drive, record or download other people's sessions. Here
the routes exist only when the server has a token (the token middleware then
guards them); without one they are 404 and no route lists session ids.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from httpapi import ok, redact_url
if TYPE_CHECKING:
    from server.context import ServerContext

SECRET_WORDS = ("token", "key", "secret", "password", "credential")
REDACTED = "***"


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


def register(app: web.Application, ctx: "ServerContext") -> None:
    args, sessions = ctx.args, ctx.sessions
    if not args.auth_token:
        return

    async def admin_config(_request: web.Request) -> web.Response:
        return ok(data=public_settings(args))

    async def admin_sessions(_request: web.Request) -> web.Response:
        now = time.monotonic()
        listing = [{
            "sessionid": session.id,
            "connection": session.pc.connectionState,
            "age_s": round(now - session.created, 1),
            "idle_s": round(now - session.last_activity, 1),
            "speaking": session.speaking,
            "avatar": session.engine.avatar.avatar_id,
            "engine": session.engine.name,
        } for session in sessions.all()]
        return ok(data=listing)

    app.router.add_get("/api/admin/config", admin_config)
    app.router.add_get("/api/admin/sessions", admin_sessions)
