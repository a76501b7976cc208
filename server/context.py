"""The server's process-wide state and the one shape every feature module has.

A feature (server/*, stage/*, listen, ops) is a module with `register(app, ctx)` for
its routes and start/stop hooks and, when it has flags of its own, `add_arguments(parser)`;
app.py mounts them all the same way. Nothing here is a module global: the context lives on the app.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from httpapi import BadRequest, require_str
from server import ltcompat

if TYPE_CHECKING:
    from avatars.store import AvatarStore
    from engines import EngineFactory
    from llm import LLMClient
    from ops.metrics import Metrics
    from server.security import AccessPolicy
    from session import Session, SessionRegistry
    from tts.factory import TTSFactory


class Feature(Protocol):
    """What app.py mounts: a module with this function (and `add_arguments(parser)` when it has flags)."""

    def register(self, app: web.Application, ctx: "ServerContext") -> None: ...


@dataclass
class ServerContext:
    """Process-wide state handed to the route handlers."""

    args: argparse.Namespace
    avatars: "AvatarStore"
    engines: "EngineFactory"
    sessions: "SessionRegistry"
    tts: "TTSFactory"
    llm: "LLMClient"
    access: "AccessPolicy"
    metrics: "Metrics"
    background: set[asyncio.Task] = field(default_factory=set)

    def session_from(self, body: dict) -> "Session":
        """The live session a request body's `sessionid` names (404 otherwise); counts as activity."""
        body = ltcompat.with_push_session(ltcompat.sessionid_as_text(body, self.args.numeric_session_ids), self.args)
        session_id = require_str(body, "sessionid", max_len=64)
        session = self.sessions.get(session_id)
        if session is None:
            raise BadRequest(f"unknown sessionid {session_id!r}: post /offer first", status=404)
        session.touch()
        return session

    def missing_session(self, body: dict) -> web.Response | None:
        """LiveTalking's HTTP 200 "session not found" for a body naming no session, in the old pages' mode
        (--numeric-session-ids, no pushed session to default to); None otherwise."""
        return ltcompat.session_not_found(ltcompat.with_push_session(body, self.args), self.args)


CONTEXT_KEY = web.AppKey("context", ServerContext)


def context_of(request: web.Request) -> ServerContext:
    return request.app[CONTEXT_KEY]
