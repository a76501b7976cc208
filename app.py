"""HTTP + WebRTC server: the entry. Parse the flags, build the context, mount the features, serve.

Run `python app.py --help` for the flags. The API is LiveTalking-compatible
(see DESIGN.md); every error answers `{code: -1, msg}` with a 4xx/5xx status.
Each feature module (server/, stage/, listen/, ops/) declares its own flags and
routes and is mounted the same way: `register(app, ctx)`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

import listen
import llm
import ops
from avatars.format import AvatarError
from avatars.store import AvatarStore
from basereal import EngineConfig
from engines import EngineFactory, EngineUnavailable, resolve_model
from httpapi import BODY_TIMEOUT_KEY, error_middleware
from llm import LLMClient, LLMError
from musetalk.settings import MuseTalkSettings
from ops.metrics import Metrics
from server import admin, avatartasks, events, ltcompat, offer, speech, webfiles
from server.context import CONTEXT_KEY, ServerContext
from server.flags import build_parser as build_flags
from server.security import AccessPolicy, RedactingAccessLogger
from session import SessionRegistry
from stage import actions, avatarswitch, recorder
from tts import factory as tts_factory
from tts.base import TTSError

logger = logging.getLogger("app")

# Mounted in this order; listening before ops (ops observes it); web files' catch-all comes last.
FEATURES = (offer, speech, events, webfiles, actions, recorder, avatarswitch, avatartasks, admin, listen, ops)
UPLOAD_SLACK_BYTES = 1024 * 1024  # multipart framing around the largest upload


def build_parser() -> argparse.ArgumentParser:
    return build_flags(FEATURES)


def build_context(args: argparse.Namespace, engines: EngineFactory | None = None) -> ServerContext:
    """The process-wide state: avatars, the engine factory, sessions, TTS, the LLM client, access, metrics."""
    avatars = AvatarStore(args.data_dir / "avatars", max_bytes=int(args.avatar_cache_mb * 2**20))
    if engines is None:
        config = EngineConfig(fps=args.fps, batch_size=args.batch_size)
        musetalk = MuseTalkSettings(right_chunks=args.right_context, channels_last=args.musetalk_channels_last,
                                    compile=args.musetalk_compile)
        engines = EngineFactory(resolve_model(args.model, args.models_dir), avatars, config, args.models_dir, musetalk)
    metrics = Metrics(engines.model)
    ctx = ServerContext(args=args, avatars=avatars, engines=engines,
                        sessions=SessionRegistry(args.max_session, args.worker_id),
                        tts=tts_factory.start_factory(tts_factory.settings_from_args(args)),
                        llm=LLMClient(llm.settings_from_args(args)),
                        access=AccessPolicy(args.auth_token, args.allow_origins), metrics=metrics)
    engines.observe_batches(metrics.observe_batch)
    ctx.llm.on_first_token = metrics.observe_llm_first_token
    if args.numeric_session_ids:
        ctx.sessions.new_id = ltcompat.numeric_session_id
    return ctx


def create_app(args: argparse.Namespace, engines: EngineFactory | None = None) -> web.Application:
    ctx = build_context(args, engines)
    upload_limit = int(args.max_upload_mb * 1024 * 1024) + UPLOAD_SLACK_BYTES
    app = web.Application(middlewares=[error_middleware, ctx.access.middleware], client_max_size=upload_limit)
    app[CONTEXT_KEY] = ctx
    app[BODY_TIMEOUT_KEY] = args.body_timeout
    for feature in FEATURES:
        feature.register(app, ctx)
    webfiles.register_catch_all(app)

    async def shutdown(app: web.Application) -> None:
        for task in ctx.background:
            task.cancel()
        await ctx.sessions.close_all("server shutdown")
        await ctx.llm.close()
        await asyncio.get_running_loop().run_in_executor(None, ctx.engines.close)
        await asyncio.get_running_loop().run_in_executor(None, ctx.tts.close)

    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := ops.check_arguments(args):
        parser.error(problem)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(args)
    except (EngineUnavailable, TTSError, LLMError, listen.ListenConfigError, ValueError) as exc:  # ActionConfigError is a ValueError
        logger.error("%s", exc)
        return 2
    ctx = app[CONTEXT_KEY]
    if not ctx.avatars.exists(args.avatar_id):
        logger.error("avatar %r not found in %s: build it with `python genavatar.py --avatar_id %s --image PHOTO`"
                     " (the default one: `python genavatar.py --default`)", args.avatar_id, ctx.avatars.root, args.avatar_id)
        return 2
    try:
        ctx.engines.prepare(args.avatar_id)  # a LiveTalking folder gets its landmarks now, not at the first offer
    except AvatarError as exc:
        logger.error("%s", exc)
        return 2
    ctx.access.warn_if_exposed(args.host)
    logger.info("engine: %s; open http://%s:%d/", ctx.engines.model, args.host, args.listenport)
    # keepalive_timeout is aiohttp's deadline for a connection waiting on a request head (slow headers) or idle
    ops.run(app, ctx, access_log_class=RedactingAccessLogger,
            keepalive_timeout=args.header_timeout)  # until SIGTERM/SIGINT, then drains for --drain-timeout
    return 0


if __name__ == "__main__":
    sys.exit(main())
