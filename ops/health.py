"""Liveness, readiness and the draining state a load balancer reads.

`/healthz` answers while the process serves at all. `/readyz` answers 503 when
this worker should get no new offer: it is draining, its engine is not loaded,
or it is at its session limit. While draining, `/offer` itself answers 503 at
once, so nginx (`proxy_next_upstream http_503 non_idempotent`) tries the next
worker.
"""

from __future__ import annotations

import time
from typing import Callable

from aiohttp import web

from httpapi import error, ok

DRAINING_MSG = "this server is shutting down and takes no new sessions: connect again (another worker will answer)"


class Lifecycle:
    """Process state that health checks and the drain share (one per app)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.draining = False

    def uptime(self) -> float:
        return time.monotonic() - self.started


LIFECYCLE_KEY = web.AppKey("lifecycle", Lifecycle)


def readiness_problem(lifecycle: Lifecycle, engine_loaded: bool, live: int, limit: int) -> str | None:
    """Why this worker should get no new offer now, or None when it has room."""
    if lifecycle.draining:
        return "draining"
    if not engine_loaded:
        return "engine not loaded"
    if live >= limit:
        return f"at the session limit ({live}/{limit})"
    return None


def health_routes(lifecycle: Lifecycle, engine_loaded: Callable[[], bool], load: Callable[[], tuple[int, int]]):
    """Handlers for /healthz and /readyz; `load` returns (sessions incl. starting, limit)."""

    async def healthz(request: web.Request) -> web.Response:
        return ok(status="alive", uptime_s=round(lifecycle.uptime(), 1))

    async def readyz(request: web.Request) -> web.Response:
        live, limit = load()
        problem = readiness_problem(lifecycle, engine_loaded(), live, limit)
        if problem is not None:
            return error(503, f"not ready: {problem}")
        return ok(status="ready", sessions=live, limit=limit)

    return healthz, readyz


@web.middleware
async def drain_middleware(request: web.Request, handler):
    """While draining, refuse new sessions before any work is done for them."""
    if request.method == "POST" and request.path == "/offer" and request.app[LIFECYCLE_KEY].draining:
        return error(503, DRAINING_MSG)
    return await handler(request)
