"""Small helpers every endpoint uses: JSON bodies in, `{code, msg}` errors out.

Input from the network is hostile: a body is read whole (up to a byte limit,
within a time limit) before it is parsed, must be declared as JSON, and any
parse failure (bad syntax, absurd nesting, a 5,000-digit number) is a 400.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024
BODY_READ_TIMEOUT_S = 10.0  # a client that trickles its body slower than this is cut off
HEADER_TIMEOUT_S = 20.0  # a connection whose request head is not complete by then is closed (above aiohttp clients' 15 s idle reuse)
JSON_CONTENT_TYPE = "application/json"
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)  # set from --body-timeout


class BadRequest(Exception):
    """Input a client sent that we refuse; becomes `{code: -1, msg}` with `status`."""

    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.msg = msg
        self.status = status


def ok(**data: Any) -> web.Response:
    return web.json_response({"code": 0, "msg": "ok", **data})


def error(status: int, msg: str) -> web.Response:
    return web.json_response({"code": -1, "msg": msg}, status=status)


async def read_body(request: web.Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole body (however many TCP segments it arrives in), or 413 / 408."""
    if timeout_s is None:
        timeout_s = request.config_dict.get(BODY_TIMEOUT_KEY, BODY_READ_TIMEOUT_S)
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest(f"request body over {max_bytes} bytes", status=413)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(f"request body over {max_bytes} bytes", status=413)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise BadRequest(f"request body not received within {timeout_s:g} s", status=408) from None
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise BadRequest(f"body is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def read_json(request: web.Request, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request's JSON object, or BadRequest with a message saying what is wrong.

    Requiring `Content-Type: application/json` also means a cross-site page
    cannot post here with a "simple" request that skips the CORS preflight.
    """
    if request.content_type != JSON_CONTENT_TYPE:
        raise BadRequest(f"send the body as {JSON_CONTENT_TYPE} (got {request.content_type or 'none'!r})",
                         status=415)
    return parse_json_object(await read_body(request, max_bytes))


def require_str(body: dict[str, Any], key: str, max_len: int = 100_000, allow_empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' is required and must be a string")
    if not allow_empty and not value.strip():
        raise BadRequest(f"'{key}' must not be empty")
    if len(value) > max_len:
        raise BadRequest(f"'{key}' is longer than {max_len} characters", status=413)
    return value


def optional_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false")
    return value


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client gave up on: counted, never as a 5xx


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Turn BadRequest into a clear 4xx, a client hanging up into a quiet 499 (INFO, never a 5xx) and any
    other failure into a logged 500."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(exc.status, exc.msg)
    except ConnectionResetError:  # the client hung up (aiohttp's ClientConnectionResetError is one too)
        logger.info("%s %s: the client hung up", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path not in ("/", "") and not request.path.startswith("/web"):
            return error(exc.status, exc.reason)
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal server error (see the server log)")


STREAM_KEY_SCHEMES = ("rtmp", "rtmps", "srt")  # the last path segment of these URLs is a stream key
REDACTED_PART = "***"


def redact_url(url: str | None) -> str | None:
    """A URL fit for a log line or an answer: no user:password@, no query string or fragment, and no
    stream key (the last path segment of an rtmp/srt URL). Text that is not a URL comes back as it was."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED_PART
    netloc = (f"{REDACTED_PART}@" if "@" in parts.netloc else "") + (f"[{host}]" if ":" in host else host)
    if port is not None:
        netloc += f":{port}"
    path = parts.path
    if parts.scheme.lower() in STREAM_KEY_SCHEMES and path.strip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0] + "/" + REDACTED_PART
    query = REDACTED_PART if parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def positive_seconds(text: str) -> float:
    """argparse type of the flags that are durations."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--body-timeout", dest="body_timeout", type=positive_seconds, default=BODY_READ_TIMEOUT_S,
                        metavar="SECONDS", help="a request body (JSON) must arrive within this time (408 otherwise)")
    parser.add_argument("--header-timeout", dest="header_timeout", type=positive_seconds, default=HEADER_TIMEOUT_S,
                        metavar="SECONDS",
                        help="a connection must send a whole request head within this time, and may stay idle between "
                             "requests this long (aiohttp's keepalive_timeout, which also closes a connection whose "
                             "head is still arriving); slow-header clients are cut off")
