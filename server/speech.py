"""The speech routes: /human (echo or chat), /humanaudio (an uploaded file), /interrupt_talk, /is_speaking.

What a request may cost is budgeted: text by letters, uploads by bytes, by the
seconds of audio they decode to (the session's --speech-budget) and by the
uploads in progress in the whole process.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

from httpapi import BadRequest, ok, optional_bool, positive_seconds, read_json, require_str
from media import SAMPLE_RATE
from server.context import ServerContext, context_of
from session import Session
from speech.audiofile import AudioDecodeError, AudioTooLong, decode_audio
from speech.budget import DEFAULT_SPEECH_BUDGET_S, SpeechBudgetFull
from tts.base import TTSError
from tts.reference import resolve_reference
from ttsreal import QueueFull

MAX_UPLOADS_AT_ONCE = 4  # uploads being received or decoded in the whole process
UPLOAD_READ_TIMEOUT_S = 60.0
MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_UPLOAD_MB = 20.0


class UploadGate:
    """Counts the uploads in progress in the process (one per app)."""

    def __init__(self, limit: int = MAX_UPLOADS_AT_ONCE):
        self.limit = limit
        self.in_progress = 0


UPLOADS_KEY = web.AppKey("uploads", UploadGate)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest /humanaudio upload accepted")
    parser.add_argument("--speech-budget", dest="speech_budget", type=positive_seconds, default=DEFAULT_SPEECH_BUDGET_S,
                        metavar="SECONDS", help="audio one session may hold queued or playing (uploads); 429 beyond")


def register(app: web.Application, ctx: ServerContext) -> None:
    app[UPLOADS_KEY] = UploadGate()
    app.router.add_post("/is_speaking", is_speaking)
    app.router.add_post("/human", human)
    app.router.add_post("/humanaudio", human_audio)
    app.router.add_post("/interrupt_talk", interrupt_talk)


async def is_speaking(request: web.Request) -> web.Response:
    session = context_of(request).session_from(await read_json(request))
    return ok(data=session.speaking)


def tts_for_request(ctx: ServerContext, backend: str | None, voice: str | None, ref_file: object = None,
                    ref_text: object = None):
    """A TTS backend for a client's choice; a reference voice must lie inside data/ (blocking: stats it)."""
    try:
        reference = resolve_reference(ctx.args.data_dir, ref_file, ref_text)
        return ctx.tts.create(backend, voice, reference)
    except TTSError as exc:
        raise BadRequest(str(exc)) from None


def requested_backend(ctx: ServerContext, session: Session, body: dict):
    """The session's TTS backend, or one the request names: `tts: "espeak"` or
    `{backend, voice, ref_file, ref_text}` (a cloned voice, LiveTalking's form)."""
    choice = body.get("tts")
    if choice is None:
        return session.tts_backend
    if isinstance(choice, str):
        choice = {"backend": choice}
    if not isinstance(choice, dict) or not all(isinstance(choice.get(k, ""), str) for k in ("backend", "voice")):
        raise BadRequest("'tts' must be a backend name or {\"backend\": name, \"voice\": voice, "
                         "\"ref_file\": path, \"ref_text\": text}")
    return tts_for_request(ctx, choice.get("backend") or None, choice.get("voice") or None,
                           choice.get("ref_file"), choice.get("ref_text"))


async def human(request: web.Request) -> web.Response:
    """Speak text (echo) or answer it (chat); `interrupt: true` first silences current speech."""
    ctx = context_of(request)
    body = await read_json(request)
    session = ctx.session_from(body)
    text = require_str(body, "text", max_len=MAX_TEXT_CHARS)
    kind = body.get("type", "echo")
    if kind not in ("echo", "chat"):
        raise BadRequest("'type' must be \"echo\" or \"chat\"")
    interrupt = optional_bool(body, "interrupt")
    loop = asyncio.get_running_loop()
    backend = await loop.run_in_executor(None, requested_backend, ctx, session, body)
    if interrupt:
        session.interrupt()
    if session.probe is not None:
        session.probe.text_received()
    if kind == "chat":
        problem = ctx.llm.settings.problem()
        if problem:
            raise BadRequest(problem, status=503)
        session.chat(text, backend)
        return ok(data={"chat": True})
    try:
        utterance_id, sentences = session.tts.say(text, backend)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except QueueFull as exc:
        raise BadRequest(str(exc), status=429) from None
    return ok(data={"utterance": utterance_id, "sentences": sentences})


async def interrupt_talk(request: web.Request) -> web.Response:
    session = context_of(request).session_from(await read_json(request))
    epoch = session.interrupt()
    return ok(data={"epoch": epoch})


async def human_audio(request: web.Request) -> web.Response:
    """Play an uploaded audio file (any format FFmpeg decodes) through the avatar.

    What an upload may cost is bounded three ways: its bytes (--max-upload-mb),
    the seconds of audio it decodes to (the session's --speech-budget: decoding
    stops there), and the uploads in progress in the whole process.
    """
    ctx = context_of(request)
    limit = int(ctx.args.max_upload_mb * 1024 * 1024)
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise BadRequest(f"upload over the {ctx.args.max_upload_mb:g} MB limit", status=413)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with fields 'sessionid' and 'file'")
    gate = request.app[UPLOADS_KEY]
    if gate.in_progress >= gate.limit:
        raise BadRequest(f"{gate.limit} uploads are already being processed: try again in a moment", status=429)
    gate.in_progress += 1
    try:
        try:
            fields, data, filename = await asyncio.wait_for(read_upload(request, limit), UPLOAD_READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BadRequest(f"upload not received within {UPLOAD_READ_TIMEOUT_S:g} s", status=408) from None
        session = ctx.session_from(fields)
        if not data:
            raise BadRequest("field 'file' is missing or empty")
        budget = session.tts.budget
        allowed = budget.remaining_s()
        if allowed < 1.0:
            raise BadRequest(f"this session already holds {budget.held_s:.0f} s of audio (--speech-budget "
                             f"{budget.limit_s:g} s): wait for it to play or interrupt it", status=429)
        try:
            audio = await asyncio.get_running_loop().run_in_executor(None, decode_audio, data, allowed)
        except AudioTooLong:
            status = 413 if allowed >= budget.limit_s else 429
            raise BadRequest(f"the upload plays longer than the {allowed:.0f} s this session may still hold "
                             f"(--speech-budget {budget.limit_s:g} s): send shorter audio or interrupt", status=status) from None
        except AudioDecodeError as exc:
            raise BadRequest(str(exc), status=415) from None
        del data
        if session.probe is not None:
            session.probe.text_received()
        try:
            utterance_id = session.tts.play(audio, filename)
        except (QueueFull, SpeechBudgetFull) as exc:
            raise BadRequest(str(exc), status=429) from None
        return ok(data={"utterance": utterance_id, "seconds": round(audio.size / SAMPLE_RATE, 3)})
    finally:
        gate.in_progress -= 1


async def read_upload(request: web.Request, limit: int) -> tuple[dict[str, str], bytes | None, str]:
    """The form's sessionid, the file's bytes (at most `limit`) and its name; a malformed form is a 400."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = "upload"
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "file":
                filename = (part.filename or filename)[:100]
                chunks, size = [], 0
                while piece := await part.read_chunk(256 * 1024):
                    size += len(piece)
                    if size > limit:
                        raise BadRequest(f"upload over the {limit / 1024 / 1024:g} MB limit", status=413)
                    chunks.append(piece)
                data = b"".join(chunks)
            elif part.name == "sessionid":
                fields["sessionid"] = (await part.read_chunk(128)).decode(errors="replace").strip()[:100]
                await part.release()
            else:
                await part.release()
    except BadRequest:
        raise
    except (ValueError, AssertionError, AttributeError, KeyError, UnicodeError, aiohttp.ClientPayloadError) as exc:
        raise BadRequest(f"malformed multipart body ({type(exc).__name__}): send multipart/form-data with "
                         "fields 'sessionid' and 'file'") from None
    return fields, data, filename
