"""Every file under web/ at /<name>, as LiveTalking serves its pages (/index.html, /webrtcapi.html, ...).

A LiveTalking user copies their pages into web/ and opens them at the URLs they
know. Routes with a fixed path (/offer, /config, ...) always win over this
catch-all (aiohttp resolves the most specific resource first); only GET/HEAD
reach it, and only files inside web/ are served.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from httpapi import BadRequest, ok
from server.context import ServerContext, context_of
from server.security import public

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


def locate(root: Path, name: str) -> Path | None:
    """The file `name` names inside root, or None (blocking: resolves links and stats)."""
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


@public
async def client_config(request: web.Request) -> web.Response:
    """What the page needs to connect: ICE servers, which engine runs, the voices it may pick."""
    ctx = context_of(request)
    voices = await asyncio.get_running_loop().run_in_executor(None, ctx.tts.voices)  # scans installed packages
    ice = [{"urls": s.urls, **({"username": s.username, "credential": s.credential} if s.username else {})}
           for s in ctx.args.ice_servers]
    chat_problem = ctx.llm.settings.problem()
    return ok(iceServers=ice, model=ctx.engines.model, fps=ctx.args.fps, auth=ctx.access.auth_token is not None,
              avatar=ctx.args.avatar_id, avatars=ctx.avatars.available(),
              chat=chat_problem is None, chat_problem=chat_problem, voices=voices)


@public
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def register(app: web.Application, ctx: ServerContext) -> None:
    """The page at /, /config, web/ at /web/<name> and at /<name> (a catch-all, registered last)."""
    app.router.add_get("/", index)
    app.router.add_get("/config", client_config)
    app.router.add_static("/web", WEB_DIR)


def register_catch_all(app: web.Application) -> None:
    root = WEB_DIR.resolve()

    @public  # pages and scripts carry no secrets; the API calls they make need the token
    async def web_file(request: web.Request) -> web.FileResponse:
        path = await asyncio.get_running_loop().run_in_executor(None, locate, root, request.match_info["path"])
        if path is None:
            raise BadRequest(f"no page or file {request.path!r}", status=404)
        return web.FileResponse(path)

    app.router.add_get("/{path:.+}", web_file)
