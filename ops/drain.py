"""Serving with a graceful drain on SIGTERM (and SIGINT).

On the first signal the worker stops taking offers (503), tells every
connected page why and how long it has, and waits for sessions to end by
themselves for up to --drain-timeout; the sessions left are then closed with
a `closed` event naming the reason, and the process exits 0. A second signal
cuts the wait short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

from aiohttp import web

from ops.health import Lifecycle

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.2
DRAIN_TIMEOUT_REASON = "server shutting down: drain timeout reached"


class Drainer:
    """Runs the drain once; `request()` is safe to call from a signal handler."""

    def __init__(self, lifecycle: Lifecycle, sessions, timeout: float) -> None:
        self.lifecycle = lifecycle
        self.sessions = sessions  # a session.SessionRegistry
        self.timeout = timeout
        self.done = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task | None = None

    def request(self, signame: str) -> None:
        if self._task is None:
            logger.info("%s: draining (no new sessions; %d live; up to %.0f s)", signame, len(self.sessions), self.timeout)
            self._task = asyncio.create_task(self._drain(), name="drain")
        else:
            logger.info("%s again: closing the remaining sessions now", signame)
            self._hurry.set()

    def _listened(self) -> int:
        """Sessions someone is connected to (a broadcast session never ends by itself)."""
        return sum(not session.broadcast for session in self.sessions.all())

    async def _drain(self) -> None:
        self.lifecycle.draining = True
        notice = {"type": "draining", "reason": "server shutting down", "within_s": self.timeout}
        for session in self.sessions.all():
            session.events.publish(notice)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while self._listened() and loop.time() < deadline and not self._hurry.is_set():
            try:
                await asyncio.wait_for(self._hurry.wait(), DRAIN_POLL_S)
            except asyncio.TimeoutError:
                pass
        if len(self.sessions):
            logger.info("drain: closing %d session(s) still open", len(self.sessions))
            await self.sessions.close_all(DRAIN_TIMEOUT_REASON)
        self.done.set()


async def serve(app: web.Application, host: str, port: int, make_drainer: Callable[[], Drainer],
                **runner_options) -> None:
    """Serve until SIGTERM/SIGINT, drain, then shut the app down (its on_shutdown hooks run)."""
    runner = web.AppRunner(app, handle_signals=False, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        drainer = make_drainer()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, drainer.request, signal.Signals(signum).name)
        await drainer.done.wait()
    finally:
        await runner.cleanup()
    logger.info("drained and stopped")
