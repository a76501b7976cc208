"""Custom actions (LiveTalking's `customvideo_config`): clips of frames with their own audio.

A config is a JSON list of `{"audiotype": int, "imgpath": DIR, "audiopath"?: WAV}`,
from `--customvideo_config FILE` or per session as the `custom_config` JSON
string of /offer. `audiotype 1` is the idle clip, shown while nothing is
spoken; any other one is played by `POST /set_audiotype` to its end, then the
session returns to idle. Every path must lie inside the data folder; a clip is
loaded once per process (cached by its resolved paths) and shared read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from aiohttp import web

from speech.audiofile import AudioDecodeError, decode_audio
from avatars.format import METADATA_FILE, AvatarError
from avatars.store import load_avatar
from basereal import BaseReal
from httpapi import BadRequest, ok, read_json
from scene import DEFAULT_FADE_FRAMES, Clip
from sync.once import OnceCache

if TYPE_CHECKING:
    from server.context import ServerContext

logger = logging.getLogger(__name__)

IDLE_AUDIOTYPE = 1
MAX_ACTIONS = 32
MAX_CLIP_FRAMES = 3000  # two minutes at 25 fps
MAX_FRAME_PIXELS = 1920 * 1080
MAX_CLIP_BYTES = 1024 ** 3  # decoded frames of one clip
MAX_AUDIO_BYTES = 50 * 1024 * 1024
MAX_AUDIO_SECONDS = 300.0
MAX_CONFIG_CHARS = 64 * 1024
MAX_CACHED_CLIPS = 32
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


class ActionConfigError(ValueError):
    """A custom action config a user must fix; the message names the offending field."""


@dataclass(frozen=True)
class ActionSpec:
    """One validated entry of a config: resolved paths inside the data folder."""

    audiotype: int
    imgpath: Path
    audiopath: Path | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customvideo-config", "--customvideo_config", dest="customvideo_config",
                        type=Path, default=None,
                        metavar="FILE", help="custom actions for every session: a JSON list of "
                        "{audiotype, imgpath, audiopath?} (paths inside the data folder; audiotype 1 = idle clip)")
    parser.add_argument("--action-crossfade", dest="action_crossfade", type=int, default=DEFAULT_FADE_FRAMES,
                        metavar="FRAMES", help="frames of crossfade between the avatar, idle clip and action clips, "
                        "and on /set_avatar (0: cut)")


def resolve_inside(text: str, data_dir: Path, field: str) -> Path:
    """A config path -> an absolute path inside `data_dir`.

    Relative paths are relative to the data folder; LiveTalking's `data/...`
    spelling is accepted too.
    """
    path = Path(text)
    if not path.is_absolute():
        if path.parts and path.parts[0] == "data":
            path = Path(*path.parts[1:])
        path = data_dir / path
    resolved = path.resolve()
    root = data_dir.resolve()
    if resolved != root and root not in resolved.parents:
        raise ActionConfigError(f"{field}: {text!r} is outside the data folder {root}; put the clip under it")
    return resolved


def parse_config(raw: Any, data_dir: Path, source: str) -> list[ActionSpec]:
    """Validate a config (a JSON string or an already parsed list); `source` names it in errors."""
    if isinstance(raw, str):
        if len(raw) > MAX_CONFIG_CHARS:
            raise ActionConfigError(f"{source}: longer than {MAX_CONFIG_CHARS} characters")
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ActionConfigError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ActionConfigError(f"{source} must be a JSON list of {{audiotype, imgpath, audiopath?}}")
    if len(raw) > MAX_ACTIONS:
        raise ActionConfigError(f"{source}: at most {MAX_ACTIONS} actions")
    specs: list[ActionSpec] = []
    seen: set[int] = set()
    for i, entry in enumerate(raw):
        where = f"{source}[{i}]"
        if not isinstance(entry, dict):
            raise ActionConfigError(f"{where} must be an object {{audiotype, imgpath, audiopath?}}")
        audiotype = entry.get("audiotype")
        if isinstance(audiotype, bool) or not isinstance(audiotype, int) or not 1 <= audiotype <= 1_000_000:
            raise ActionConfigError(f"{where}.audiotype must be an integer >= 1 (1 = the idle clip)")
        if audiotype in seen:
            raise ActionConfigError(f"{where}.audiotype {audiotype} appears twice")
        seen.add(audiotype)
        imgpath = entry.get("imgpath")
        if not isinstance(imgpath, str) or not imgpath.strip():
            raise ActionConfigError(f"{where}.imgpath must be a folder of frames named 0.png, 1.png, ...")
        folder = resolve_inside(imgpath, data_dir, f"{where}.imgpath")
        if not folder.is_dir():
            raise ActionConfigError(f"{where}.imgpath: frame folder {imgpath!r} does not exist")
        audiopath = entry.get("audiopath")
        audio = None
        if audiopath is not None:
            if not isinstance(audiopath, str) or not audiopath.strip():
                raise ActionConfigError(f"{where}.audiopath must be a path to an audio file")
            audio = resolve_inside(audiopath, data_dir, f"{where}.audiopath")
            if not audio.is_file():
                raise ActionConfigError(f"{where}.audiopath: audio file {audiopath!r} does not exist")
        unknown = set(entry) - {"audiotype", "imgpath", "audiopath"}
        if unknown:
            raise ActionConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        specs.append(ActionSpec(audiotype, folder, audio))
    return specs


def frame_files(folder: Path) -> list[Path]:
    """Frames named <int>.png/.jpg in numeric order (LiveTalking's naming)."""
    numbered = [(int(p.stem), p) for p in folder.iterdir()
                if p.suffix.lower() in FRAME_SUFFIXES and p.stem.isdigit()]
    return [p for _, p in sorted(numbered)]


def load_clip(spec: ActionSpec, field: str) -> Clip:
    """Read a clip's frames and audio (blocking: run it in an executor).

    A folder of numbered frames is shown as recorded; a prepared avatar folder
    (genavatar.py's output) is lip-synced to the clip's audio by engines that can.
    """
    avatar = None
    if (spec.imgpath / METADATA_FILE).is_file():
        try:
            avatar = load_avatar(spec.imgpath)
        except AvatarError as exc:
            raise ActionConfigError(f"{field}.imgpath: {exc}") from None
        if avatar.frame_count > MAX_CLIP_FRAMES or avatar.frames.nbytes > MAX_CLIP_BYTES:
            raise ActionConfigError(f"{field}.imgpath: {avatar.frame_count} frames of {avatar.size}: at most "
                                    f"{MAX_CLIP_FRAMES} frames and {MAX_CLIP_BYTES >> 20} MB decoded")
        frames = list(avatar.frames)
    else:
        frames = read_frames(spec.imgpath, field)
    audio = None
    if spec.audiopath is not None:
        if spec.audiopath.stat().st_size > MAX_AUDIO_BYTES:
            raise ActionConfigError(f"{field}.audiopath: over {MAX_AUDIO_BYTES // (1024 * 1024)} MB")
        try:
            audio = decode_audio(spec.audiopath.read_bytes(), MAX_AUDIO_SECONDS)
        except AudioDecodeError as exc:
            raise ActionConfigError(f"{field}.audiopath: {exc}") from None
        audio.setflags(write=False)
    logger.info("loaded action clip %s: %d frames, %s%s", spec.imgpath.name, len(frames),
                f"{audio.size / 16000:.2f} s audio" if audio is not None else "no audio",
                ", a prepared avatar (lip-synced where the engine can)" if avatar is not None else "")
    return Clip(name=spec.imgpath.name, frames=tuple(frames), audio=audio, avatar=avatar)


def read_frames(folder: Path, field: str) -> list[np.ndarray]:
    files = frame_files(folder)
    if not files:
        raise ActionConfigError(f"{field}.imgpath: {folder.name!r} holds no frames named 0.png, 1.png, ...")
    if len(files) > MAX_CLIP_FRAMES:
        raise ActionConfigError(f"{field}.imgpath: {len(files)} frames, at most {MAX_CLIP_FRAMES}")
    frames = []
    total = 0
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ActionConfigError(f"{field}.imgpath: frame {path.name} is not a readable image")
        if image.shape[0] * image.shape[1] > MAX_FRAME_PIXELS:
            raise ActionConfigError(f"{field}.imgpath: frame {path.name} is larger than 1920x1080")
        total += image.nbytes
        if total > MAX_CLIP_BYTES:
            raise ActionConfigError(f"{field}.imgpath: over {MAX_CLIP_BYTES >> 20} MB of decoded frames; "
                                    "use fewer or smaller frames")
        image.setflags(write=False)
        frames.append(image)
    return frames


class ClipLibrary:
    """Loads clips once per process, cached by their resolved paths (thread-safe, bounded)."""

    def __init__(self, data_dir: Path, fade_frames: int, max_cached: int = MAX_CACHED_CLIPS):
        self.data_dir = data_dir
        self.fade_frames = fade_frames
        self.default: dict[int, Clip] = {}
        self._cache: OnceCache[tuple[Path, Path | None], Clip] = OnceCache(max_cached, "clip cache")

    def clip(self, spec: ActionSpec, field: str) -> Clip:
        return self._cache.get((spec.imgpath, spec.audiopath), lambda: load_clip(spec, field))

    def load(self, raw: Any, source: str) -> dict[int, Clip]:
        """Validate and load a whole config (blocking): audiotype -> clip."""
        specs = parse_config(raw, self.data_dir, source)
        return {spec.audiotype: self.clip(spec, f"{source}[{i}]") for i, spec in enumerate(specs)}

    def apply(self, engine: BaseReal, clips: dict[int, Clip] | None) -> None:
        """Give a new session its actions: its own config, else the server's (blocking: may rig avatars)."""
        chosen = self.default if clips is None else clips
        lipsynced = frozenset(id(clip) for clip in chosen.values()
                              if clip.avatar is not None and clip.audio is not None and engine.can_lipsync(clip.avatar))
        engine.scene.configure(chosen, self.fade_frames, lipsynced)


LIBRARY_KEY = web.AppKey("actions", ClipLibrary)


async def offer_actions(request: web.Request, body: dict) -> dict[int, Clip] | None:
    """The clips a /offer asks for with `custom_config` (None: the server's), or a 400 naming the field."""
    raw = body.get("custom_config")
    if raw is None or raw == "":
        return None
    library = request.app[LIBRARY_KEY]
    try:
        return await asyncio.get_running_loop().run_in_executor(None, library.load, raw, "custom_config")
    except ActionConfigError as exc:
        raise BadRequest(str(exc)) from None


def register(app: web.Application, ctx: "ServerContext") -> None:
    """Load --customvideo_config (raises ActionConfigError) and add /set_audiotype."""
    args = ctx.args
    library = ClipLibrary(args.data_dir, max(0, args.action_crossfade))
    if args.customvideo_config is not None:
        try:
            text = Path(args.customvideo_config).read_text()
        except OSError as exc:
            raise ActionConfigError(f"--customvideo_config: cannot read {args.customvideo_config}: {exc}") from None
        library.default = library.load(text, "--customvideo_config")
    app[LIBRARY_KEY] = library

    async def set_audiotype(request: web.Request) -> web.Response:
        """Play action `audiotype` to its end (1 or 0: back to idle now)."""
        body = await read_json(request)
        session = ctx.session_from(body)
        audiotype = body.get("audiotype")
        if isinstance(audiotype, str) and audiotype.isdecimal() and len(audiotype) <= 7:
            audiotype = int(audiotype)  # a number typed into a form may arrive as a string
        if isinstance(audiotype, bool) or not isinstance(audiotype, int):
            raise BadRequest("'audiotype' must be an integer")
        scene = session.engine.scene
        if audiotype in (0, IDLE_AUDIOTYPE):
            scene.stop()
            return ok(data={"audiotype": audiotype, "seconds": 0.0})
        if audiotype not in scene.actions:
            known = ", ".join(str(k) for k in sorted(scene.actions)) or "none"
            raise BadRequest(f"audiotype {audiotype} is not configured for this session (configured: {known}); "
                             "set them with --customvideo_config or custom_config in /offer", status=404)
        if session.speaking:
            raise BadRequest("the avatar is speaking: POST /interrupt_talk first, or wait for the end event",
                             status=409)
        clip = scene.play(audiotype)
        seconds = clip.length(session.engine.chunks_per_frame) / session.engine.config.fps
        return ok(data={"audiotype": audiotype, "seconds": round(seconds, 3)})

    app.router.add_post("/set_audiotype", set_audiotype)
