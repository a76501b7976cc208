"""Small helpers every endpoint uses: JSON bodies in, `{code, msg}` errors out."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024


class BadRequest(Exception):
    """Input a client sent that we refuse; becomes `{code: -1, msg}` with `status`."""

    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.msg = msg
        self.status = status


def ok(**data: Any) -> web.Response:
    return web.json_response({"code": 0, **data})


def error(status: int, msg: str) -> web.Response:
    return web.json_response({"code": -1, "msg": msg}, status=status)


async def read_json(request: web.Request, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request's JSON object, or BadRequest with a message saying what is wrong."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest(f"request body over {max_bytes} bytes", status=413)
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BadRequest(f"request body over {max_bytes} bytes", status=413)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


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


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Turn BadRequest into a clear 4xx and any other failure into a logged 500."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(exc.status, exc.msg)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path not in ("/", "") and not request.path.startswith("/web"):
            return error(exc.status, exc.reason)
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal server error (see the server log)")
