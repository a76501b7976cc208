"""Who may call the API: an optional bearer token, same-origin by default, CORS for listed origins.

The page and its static files are public (the page takes the token from its URL
fragment); every other route needs `Authorization: Bearer TOKEN` when a token is
set (`?token=` is accepted on GET, for EventSource, which cannot send headers).
A request that carries an `Origin` other than the server's own is refused unless
that origin is listed with `--allow-origin`, so a web page a local user happens to
open cannot drive a server on their machine.
"""

from __future__ import annotations

import argparse
import os
import hashlib
import hmac
import ipaddress
import logging
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from httpapi import error

logger = logging.getLogger(__name__)

AUTH_TOKEN_ENV = "AVATAR_AUTH_TOKEN"
ANY_ORIGIN = "*"
CORS_MAX_AGE_S = 600
CORS_ALLOW_HEADERS = "Content-Type, Authorization"
CORS_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
SECRET_QUERY_KEYS = ("sessionid", "token")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a route handler as reachable without the token (the page and what it loads first)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")  # set by proxies: the request came from elsewhere


def is_loopback_address(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x; False for names, empty or anything unparsable."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_local_request(request: web.BaseRequest) -> bool:
    """Made on this machine, to a loopback name, and not relayed by a proxy.

    All three are needed: a proxy on the same machine (nginx in deploy/) makes every
    client's request come from 127.0.0.1, so a request carrying a forwarding header is
    not local; a page on another site that rebinds its DNS name to 127.0.0.1 reaches us
    from loopback but with its own name in Host, so Host must be a loopback name too.
    """
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    if not is_loopback_address(request.remote):
        return False
    hostname = urlsplit(f"//{request.host}").hostname or ""
    return hostname == "localhost" or is_loopback_address(hostname)


def normalise_origin(origin: str) -> str:
    if origin == ANY_ORIGIN:
        return origin
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"bad origin {origin!r}: use scheme://host[:port], e.g. https://example.org, or *")
    return f"{parts.scheme}://{parts.netloc}".lower()


class AccessPolicy:
    """The token and the origins allowed; `middleware` enforces them on every request."""

    def __init__(self, auth_token: str | None, allowed_origins: list[str]):
        self.auth_token = auth_token or None
        self.allowed_origins = {normalise_origin(o) for o in allowed_origins}

    def origin_allowed(self, origin: str) -> bool:
        return ANY_ORIGIN in self.allowed_origins or origin.lower() in self.allowed_origins

    @staticmethod
    def same_origin(request: web.Request, origin: str) -> bool:
        parts = urlsplit(origin)
        host = request.host.lower()
        return parts.netloc.lower() == host or (":" not in host and parts.hostname == host)

    def token_ok(self, request: web.Request) -> bool:
        if self.auth_token is None:
            return True
        header = request.headers.get("Authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not presented and request.method == "GET":
            presented = request.query.get("token", "")
        return hmac.compare_digest(presented.encode(), self.auth_token.encode())

    def cors_headers(self, origin: str) -> dict[str, str]:
        allow = ANY_ORIGIN if ANY_ORIGIN in self.allowed_origins else origin
        return {"Access-Control-Allow-Origin": allow, "Vary": "Origin"}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        cross = origin is not None and not self.same_origin(request, origin)
        if cross and not self.origin_allowed(origin):
            return error(403, f"requests from origin {origin!r} are refused: start the server with "
                              f"--allow-origin {origin} to allow that page")
        if request.method == "OPTIONS" and cross:
            return web.Response(status=204, headers={
                **self.cors_headers(origin), "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS, "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})
        route_handler = request.match_info.handler
        is_public = getattr(route_handler, "public", False) or isinstance(
            request.match_info.route.resource, web.StaticResource)
        if not is_public and not self.token_ok(request):
            response: web.StreamResponse = error(
                401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (or open the page as "
                     "/#token=TOKEN)")
        else:
            response = await handler(request)
        if cross and not response.prepared:
            response.headers.update(self.cors_headers(origin))
        return response

    def warn_if_exposed(self, host: str) -> None:
        if self.auth_token is None and not is_loopback_host(host):
            logger.warning("binding %s without --auth-token: anyone who can reach this address can open sessions "
                           "and make the avatar speak; set --auth-token (or %s)", host, AUTH_TOKEN_ENV)


def short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines without session ids or tokens: a query's secret is logged as a short hash."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path = request.path
        if request.query_string:
            pairs = [f"{key}=#{short_hash(value)}" if key in SECRET_QUERY_KEYS else f"{key}={value[:64]}"
                     for key, value in request.query.items()]
            path = f"{path}?{'&'.join(pairs)}"
        self.logger.info('%s "%s %s" %d %.3fs', request.remote, request.method, path[:300], response.status, time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auth-token", dest="auth_token", default=os.environ.get(AUTH_TOKEN_ENV),
                        help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${AUTH_TOKEN_ENV}); "
                             "the page takes it from its URL: /#token=TOKEN")
    parser.add_argument("--allow-origin", dest="allow_origins", action="append", default=[], metavar="ORIGIN",
                        help="let pages from this origin call the API (CORS), repeatable; '*' allows any")
