"""Running the server in production: metrics, health and drain, many workers.

app.py calls `add_arguments(parser)` for the flags and `register(app, ctx)` for
the routes and middlewares; `serve()` replaces aiohttp's run_app to drain on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from httpapi import error
from listen.service import LISTEN_KEY
from server.security import public
from ops import broadcast
from ops.broadcast import BROADCAST_KEY, Broadcast, check_arguments
from ops.drain import Drainer, serve
from ops.health import LIFECYCLE_KEY, Lifecycle, drain_middleware, health_routes
from ops.metrics import bearer_matches, route_name
from server.offer import build_session

if TYPE_CHECKING:
    from server.context import ServerContext

__all__ = ["add_arguments", "check_arguments", "register", "run"]

WORKER_ID_PATTERN = re.compile(r"^[a-z0-9]{1,16}$")
DEFAULT_DRAIN_TIMEOUT_S = 30.0


def worker_id(text: str) -> str:
    if not WORKER_ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"bad worker id {text!r}: 1-16 characters of a-z and 0-9")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operation")
    group.add_argument("--metrics-token", dest="metrics_token", default=None,
                       help="Bearer token for GET /metrics (default: --auth-token when set, else open)")
    group.add_argument("--drain-timeout", dest="drain_timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S,
                       help="on SIGTERM, seconds sessions may go on before they are closed")
    group.add_argument("--worker-id", dest="worker_id", type=worker_id, default=None,
                       help="prefix of this worker's session ids (WORKER-uuid), so a proxy can route by id")
    broadcast.add_arguments(group)


def register(app: web.Application, ctx: "ServerContext") -> None:
    """/metrics, /healthz, /readyz, the middlewares that count responses and refuse offers while draining,
    and the pushed session of --transport rtmp/whip."""
    lifecycle = Lifecycle()
    app[LIFECYCLE_KEY] = lifecycle
    metrics = ctx.metrics
    metrics.watch(ctx.sessions.all, lambda: ctx.sessions.starting)
    if LISTEN_KEY in app:
        app[LISTEN_KEY].on_transcribed = metrics.observe_asr
        metrics.watch_echo(app[LISTEN_KEY].echo_stats)
    token = ctx.args.metrics_token or getattr(ctx.args, "auth_token", None)

    @public  # the middleware's --auth-token does not apply: the scraper may hold only --metrics-token
    async def metrics_handler(request: web.Request) -> web.Response:
        if token and not bearer_matches(request, token):
            return error(401, "GET /metrics needs 'Authorization: Bearer <token>' (--metrics-token or --auth-token)")
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def count_responses(request: web.Request, handler):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.http.labels(route_name(request), str(exc.status)).inc()
            raise
        metrics.http.labels(route_name(request), str(response.status)).inc()
        if response.status >= 500:
            metrics.error(f"http_{response.status}")
        return response

    healthz, readyz = health_routes(lifecycle, lambda: ctx.engines.loaded,
                                    lambda: (len(ctx.sessions) + ctx.sessions.starting, ctx.sessions.max_sessions))
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", public(healthz))  # probes of load balancers carry no token
    app.router.add_get("/readyz", public(readyz))
    app.middlewares.insert(0, drain_middleware)
    app.middlewares.insert(0, count_responses)
    if ctx.args.transport != "webrtc":
        pushed = Broadcast(ctx, build_session)
        app[BROADCAST_KEY] = pushed
        app.on_startup.append(pushed.start)
        app.on_shutdown.append(pushed.stop)


def run(app: web.Application, ctx: "ServerContext", **runner_options) -> None:
    """Serve `app` until SIGTERM, draining sessions for --drain-timeout first (options go to AppRunner)."""

    def make_drainer() -> Drainer:
        return Drainer(app[LIFECYCLE_KEY], ctx.sessions, ctx.args.drain_timeout)

    asyncio.run(serve(app, ctx.args.host, ctx.args.listenport, make_drainer, **runner_options))
