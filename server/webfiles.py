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

from httpapi import BadRequest
from server.security import public


def locate(root: Path, name: str) -> Path | None:
    """The file `name` names inside root, or None (blocking: resolves links and stats)."""
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def register_routes(app: web.Application, web_dir: Path) -> None:
    root = web_dir.resolve()

    @public  # pages and scripts carry no secrets; the API calls they make need the token
    async def web_file(request: web.Request) -> web.FileResponse:
        path = await asyncio.get_running_loop().run_in_executor(None, locate, root, request.match_info["path"])
        if path is None:
            raise BadRequest(f"no page or file {request.path!r}", status=404)
        return web.FileResponse(path)

    app.router.add_get("/{path:.+}", web_file)
