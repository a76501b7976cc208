"""GET /sse: LiveTalking's playback events, `data: {"status": "start"|"end", "text": ...}`.

Their pages listen here for speech start/end; the events are the same ones
/events sends (fired when the audio reaches WebRTC), reshaped, and a stream
takes one of the session's subscriber slots exactly as an /events stream does.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from httpapi import BadRequest
from session import Session, TooManySubscribers

if TYPE_CHECKING:
    from server.context import ServerContext

KEEPALIVE_S = 15.0
POLL_S = 0.5  # how often an idle stream checks that its listener is still there
SPEECH_EVENTS = ("start", "end")


def livetalking_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """A speech event in LiveTalking's shape; None for events their pages do not know."""
    if event.get("type") not in SPEECH_EVENTS:
        return None
    return {"status": event["type"], "text": event.get("text", ""), "utterance": event.get("utterance"),
            "interrupted": event.get("interrupted", False)}


async def stream_events(request: web.Request, session: Session,
                        render: Callable[[dict[str, Any]], dict[str, Any] | None]) -> web.StreamResponse:
    """Server-sent events of `session`, each passed through `render` (None skips it)."""
    try:
        queue = session.events.subscribe()
    except TooManySubscribers as exc:
        raise BadRequest(str(exc), status=429) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        last_write = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the listener hung up: free its slot now
                if time.monotonic() - last_write >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
                continue
            if event is None:
                break
            session.touch()
            shaped = render(event)
            if shaped is not None:
                await response.write(f"data: {json.dumps(shaped)}\n\n".encode())
                last_write = time.monotonic()
            if event.get("type") == "closed":
                break
    except ConnectionResetError:
        pass  # the listener went away
    finally:
        session.events.unsubscribe(queue)
    return response


def register(app: web.Application, ctx: "ServerContext") -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        """Server-sent events of one session: speech start/end at playout, errors, close."""
        session = ctx.session_from({"sessionid": request.query.get("sessionid")})
        return await stream_events(request, session, lambda event: event)

    async def sse(request: web.Request) -> web.StreamResponse:
        """The same events shaped as LiveTalking's /sse sends them."""
        session = ctx.session_from({"sessionid": request.query.get("sessionid")})
        return await stream_events(request, session, livetalking_event)

    app.router.add_get("/events", events)
    app.router.add_get("/sse", sse)
