"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests.

`POST /v1/chat/completions` answers with the next queued `Script` (or `default`):
SSE chunks shaped like the real API's, with delays, an HTTP error status, a
malformed line, or a stall. It records every request body and whether the client
hung up before the stream ended, which is how tests see that an interrupt closed
the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

MODEL = "test-model"


@dataclass
class Script:
    deltas: list[str] = field(default_factory=lambda: ["Hello there. ", "How are you?"])
    delay: float = 0.0  # seconds before each delta
    headers_delay: float = 0.0  # seconds before the response starts (a slow or hung server)
    status: int = 200
    error_message: str = "scripted error"
    malformed_after: int | None = None  # send an undecodable data line after this many deltas
    stall_after: int | None = None  # stop sending (without closing) after this many deltas


@dataclass
class Exchange:
    """One request as the server saw it."""

    body: dict
    headers: dict[str, str]
    started: float
    finished: float | None = None  # sent [DONE] (or the error response)
    disconnected: float | None = None  # the client hung up mid-stream
    sent_deltas: int = 0
    first_delta_at: float | None = None  # when the first content token was written


class FakeLLMServer:
    def __init__(self, default: Script | None = None):
        self.default = default or Script()
        self.scripts: deque[Script] = deque()
        self.exchanges: list[Exchange] = []
        self.disconnected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def queue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True)  # a hang-up cancels the handler
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        script = self.scripts.popleft() if self.scripts else self.default
        exchange = Exchange(await request.json(), dict(request.headers), time.monotonic())
        self.exchanges.append(exchange)
        try:
            return await self._answer(request, script, exchange)
        except (asyncio.CancelledError, ConnectionResetError):
            exchange.disconnected = time.monotonic()
            self.disconnected.set()
            raise

    async def _answer(self, request: web.Request, script: Script, exchange: Exchange) -> web.StreamResponse:
        await asyncio.sleep(script.headers_delay)
        if script.status != 200:
            exchange.finished = time.monotonic()
            body = {"error": {"message": script.error_message, "type": "test", "code": script.status}}
            return web.json_response(body, status=script.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_id = f"chatcmpl-{len(self.exchanges)}"
        await response.write(self._event(chunk_id, {"role": "assistant", "content": ""}, None))
        for index, delta in enumerate(script.deltas):
            if index == script.malformed_after:
                await response.write(b"data: {not json\n\n")
            if index == script.stall_after:
                await asyncio.sleep(3600)
            await asyncio.sleep(script.delay)
            await response.write(self._event(chunk_id, {"content": delta}, None))
            exchange.sent_deltas += 1
            if exchange.first_delta_at is None:
                exchange.first_delta_at = time.monotonic()
        if script.malformed_after == len(script.deltas):
            await response.write(b"data: {not json\n\n")
        await response.write(self._event(chunk_id, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        exchange.finished = time.monotonic()
        return response

    @staticmethod
    def _event(chunk_id: str, delta: dict, finish_reason: str | None) -> bytes:
        chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
