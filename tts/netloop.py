"""One asyncio loop on a daemon thread, shared by the network TTS backends of a process.

A session's TTS thread consumes a network stream through `NetworkLoop.iterate`,
which waits for each piece in short slices so that an interrupt or a session
close ends the transfer at once (the HTTP response is closed on the loop), and
which enforces deadlines: the first piece (connect + first byte) and every later
piece must arrive in time, or the stream ends with `StreamStalled`. A server that
accepts and never answers, or drips a byte every few seconds, can therefore hold
a session for at most one deadline, and never past an interrupt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import AsyncIterator, Callable, Iterator, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.05  # how often a waiting TTS thread checks for an interrupt
CLOSE_S = 2.0  # time allowed to close a transfer (and the loop) cleanly
DEFAULT_FIRST_PIECE_S = 10.0
DEFAULT_BETWEEN_PIECES_S = 10.0


class StreamStalled(Exception):
    """The server did not send the next piece within its deadline."""

    def __init__(self, first: bool, seconds: float):
        what = "did not start sending audio" if first else "stopped sending audio"
        super().__init__(f"{what} within {seconds:g} s")
        self.first = first
        self.seconds = seconds


_END = object()
_STALLED = object()


class _Transfer:
    """Loop-side state of one stream: the generator and the step now awaiting it."""

    def __init__(self, pieces: AsyncIterator[T]):
        self.pieces = pieces
        self.task: asyncio.Task | None = None

    async def step(self, timeout: float):
        self.task = asyncio.current_task()
        try:
            return await asyncio.wait_for(anext(self.pieces), timeout)
        except StopAsyncIteration:
            return _END
        except asyncio.TimeoutError:
            return _STALLED

    async def finish(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])
        await self.pieces.aclose()


class NetworkLoop:
    """The loop thread; `run` and `iterate` are called from other threads."""

    def __init__(self, name: str = "tts-net"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def run(self, coroutine, timeout: float | None = None):
        """Run a coroutine on the loop and wait for its result (blocking)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def iterate(
        self,
        pieces: AsyncIterator[T],
        cancelled: Callable[[], bool],
        first_piece_s: float = DEFAULT_FIRST_PIECE_S,
        between_pieces_s: float = DEFAULT_BETWEEN_PIECES_S,
    ) -> Iterator[T]:
        """Yield the async iterator's items in this thread; stop at once when `cancelled()`."""
        transfer = _Transfer(pieces)
        first = True
        try:
            while True:
                timeout = first_piece_s if first else between_pieces_s
                future = asyncio.run_coroutine_threadsafe(transfer.step(timeout), self._loop)
                item = self._wait(future, cancelled)
                if item is None or item is _END:
                    return
                if item is _STALLED:
                    raise StreamStalled(first, timeout)
                first = False
                yield item
        finally:
            try:
                self.run(transfer.finish(), CLOSE_S)
            except Exception as exc:  # closing a broken transfer must not mask why it broke
                logger.debug("closing a network TTS stream: %r", exc)

    @staticmethod
    def _wait(future: concurrent.futures.Future, cancelled: Callable[[], bool]):
        """The step's result, or None once cancelled (the step is then cancelled too)."""
        while True:
            try:
                return future.result(POLL_S)
            except concurrent.futures.TimeoutError:
                if future.done():  # the step itself raised a TimeoutError: let it out
                    return future.result()
                if cancelled():
                    future.cancel()
                    return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_S)
        if not self._thread.is_alive():
            self._loop.close()
