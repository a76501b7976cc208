"""What an avatar upload may cost, judged before anything is decoded, and its form read within budget.

`UploadLimits` comes from the flags (server/avatartasks.py defines them); `read_upload`
streams the multipart form to data/tmp with a byte limit; `judge_upload` reads only the
declared size and length (pixels, seconds, decoded bytes: 413 over a limit, 415 unreadable);
`parse_options` checks LiveTalking's form fields.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from avatars import prepare as preparation
from avatars.format import AvatarError
from httpapi import BadRequest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
MODEL_ALIASES = {"lite": "lite", "musetalk": "musetalk", "wav2lip": "lite"}  # LiveTalking's wav2lip -> our CPU engine
MAX_FIELD_CHARS = 200
UPLOAD_PIECE = 256 * 1024
INT_OPTIONS = {"bbox_shift": (-100, 100), "extra_margin": (0, 100), "max_frames": (1, 100_000)}
FLOAT_OPTIONS = {"loop_seconds": (0.04, 30.0)}


@dataclass(frozen=True)
class UploadLimits:
    """What one avatar upload may cost, from the flags."""

    upload_bytes: int
    max_seconds: float
    max_pixels: int
    decoded_bytes: int
    in_progress: int
    timeout_s: float
    fps: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "UploadLimits":
        return cls(int(args.avatar_upload_mb * 2**20), args.avatar_max_seconds,
                   int(args.avatar_max_megapixels * 1e6), int(args.avatar_decode_mb * 2**20),
                   args.avatar_uploads, args.avatar_upload_timeout, args.fps)


LIMITS_KEY = web.AppKey("avatar_task_limits", UploadLimits)


def judge_upload(path: Path, kind: str, limits: UploadLimits, options: preparation.PrepareOptions) -> int | None:
    """Judge an upload by what its header declares, decoding nothing (blocking: run in an executor).

    Returns the frame cap for a video. AvatarError (415) when it cannot be read, BadRequest 413 when
    it declares more pixels, seconds or decoded memory than allowed.
    """
    try:
        if kind == "photo":
            preparation.image_size(path, limits.max_pixels)
            return None
        info = preparation.video_info(path)
        preparation.check_pixels(info.width, info.height, limits.max_pixels, "video")
    except preparation.SourceTooLarge as exc:
        raise BadRequest(str(exc), status=413) from None
    except AvatarError as exc:
        raise BadRequest(str(exc), status=415) from None
    if info.seconds > limits.max_seconds:
        raise BadRequest(f"video is {info.seconds:.1f} s long, over the {limits.max_seconds:g} s limit: trim it",
                         status=413)
    cap = int(limits.max_seconds * limits.fps)
    max_frames = min(options.max_frames or cap, cap)
    need = preparation.decoded_bytes(info, options.fps, max_frames, options.max_side)
    if need > limits.decoded_bytes:
        raise BadRequest(f"the video's frames would take {need / 2**20:.0f} MB once decoded, over the "
                         f"{limits.decoded_bytes / 2**20:g} MB limit (--avatar-decode-mb): trim it or send "
                         f"max_frames", status=413)
    return max_frames


async def read_upload(request: web.Request, dest_dir: Path, limit_bytes: int) -> tuple[dict[str, str], Path, str]:
    """Stream the multipart form: text fields, and the file saved to dest_dir (size-limited)."""
    if request.content_length is not None and request.content_length > limit_bytes + 64 * 1024:
        raise BadRequest(f"upload over the {limit_bytes / 1024 / 1024:g} MB limit", status=413)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with fields 'file' (photo or video) and 'avatar_id' "
                         "(a video_path on the server is not accepted: upload the file)")
    fields: dict[str, str] = {}
    saved: Path | None = None
    suffix = ""
    reader = await request.multipart()
    try:
        while (part := await reader.next()) is not None:
            if part.name in ("file", "video_file") and part.filename is not None:
                if saved is not None:
                    raise BadRequest("send one file per task")
                suffix = Path(part.filename).suffix.lower()
                if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                    raise BadRequest(f"file type {suffix or '(none)'} not accepted: send "
                                     f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}", status=415)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, lambda: dest_dir.mkdir(parents=True, exist_ok=True))
                saved = dest_dir / f"{uuid.uuid4().hex}{suffix}"
                size = 0
                out = await loop.run_in_executor(None, saved.open, "wb")
                try:
                    while piece := await part.read_chunk(UPLOAD_PIECE):
                        size += len(piece)
                        if size > limit_bytes:
                            raise BadRequest(f"upload over the {limit_bytes / 1024 / 1024:g} MB limit", status=413)
                        await loop.run_in_executor(None, out.write, piece)
                finally:
                    out.close()
            elif part.name:
                fields[part.name] = (await part.read(decode=True)).decode(errors="replace")[:MAX_FIELD_CHARS]
            else:
                await part.release()
    except BaseException:
        if saved is not None:
            saved.unlink(missing_ok=True)
        raise
    if saved is None:
        if fields.get("video_path"):
            raise BadRequest("video_path (a file on the server) is not accepted: upload the file as 'file'")
        raise BadRequest("field 'file' (a photo or video) is missing")
    return fields, saved, suffix


def parse_options(fields: dict[str, str], models_dir: Path, fps: int) -> tuple[str, preparation.PrepareOptions]:
    model = MODEL_ALIASES.get(fields.get("model", "lite") or "lite")
    if model is None:
        raise BadRequest(f"'model' must be one of {', '.join(MODEL_ALIASES)}")
    if fields.get("notifyurl"):
        raise BadRequest("notifyurl is not supported (the server calls no URL a client names): "
                         "poll GET /api/avatar/task/{task_id}")
    values: dict = {}
    for name, (low, high) in {**INT_OPTIONS, **FLOAT_OPTIONS}.items():
        if fields.get(name, "") == "":
            continue
        try:
            value = (int if name in INT_OPTIONS else float)(fields[name])
        except ValueError:
            raise BadRequest(f"'{name}' must be a number") from None
        if not low <= value <= high:
            raise BadRequest(f"'{name}' must be between {low} and {high}")
        values[name] = value
    return model, preparation.PrepareOptions(model=model, models_dir=models_dir, fps=fps, **values)
