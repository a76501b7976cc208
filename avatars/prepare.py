"""Avatar preparation, the library: a photo or video -> data/avatars/<id>/ (format in data/avatars/README.md).

Per frame it stores the 68 face landmarks (dlib), MuseTalk's face box, the
1.5x square crop box and a feathered lower-face blend mask, with MuseTalk
v1.5's or v1.0's geometry. The mask comes from BiSeNet face parsing when
models/face-parse-bisent/ holds its weights, else from the landmarks
(facemask.py). A still photo is turned into a seamless idle loop (head sway,
breathing, blinks); a video's own mouths are indexed by shape (lite/mouthbank.py)
for the lite engine to show. Frames of a video where no face is found get
landmarks interpolated from their neighbours. genavatar.py is its command;
server/avatartasks.py runs it for uploads.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np

from avatars.format import (AVATAR_FORMAT_VERSION, CROP_BOXES_FILE, FACE_BOXES_FILE, FRAMES_DIR, LANDMARKS_FILE,
                            MASKS_DIR, METADATA_FILE, AvatarError, frame_path, mask_path)
from avatars.facegeom import DEFAULT_EXTRA_MARGIN, FaceLandmarker, extra_margin_for
from avatars.facemask import parsing_mode_for
from avatars.tracking import NO_PROGRESS, FaceData, Progress, face_geometry, track_faces
from avatars.idleloop import IdleAnimator, loop_poses
from avatars.livetalking import numbered_images, read_images
from lite.mouthbank import MouthBank

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AVATAR_ID = "default"
MAX_SIDE = 1280
MAX_SOURCE_PIXELS = 50_000_000  # a photo or video frame declaring more is refused before it is decoded (a 48 MP phone photo fits)
MAX_DECODED_BYTES = 1024 * 1024 * 1024  # a video's kept frames (BGR, already scaled to max_side) may take this much
BGR_BYTES_PER_PIXEL = 3
WORK_PREFIX = ".work-"  # a build's folder until it is complete; avatar ids never start with '.'
MODELS = ("lite", "musetalk")
GEOMETRY_VERSIONS = ("auto", "v15", "v1")  # MuseTalk's face box and mask differ between v1.0 and v1.5
GENERATOR_VERSION = "genavatar-2"


class SourceTooLarge(AvatarError):
    """A photo or video that would take more memory than allowed once decoded."""


@dataclass(frozen=True)
class PrepareOptions:
    bbox_shift: int = 0  # MuseTalk v1.0 only
    extra_margin: int = DEFAULT_EXTRA_MARGIN  # MuseTalk v1.5 only
    version: str = "v15"  # geometry: v15 (margin, 'jaw' mask) or v1 ('raw' mask); "auto" follows models/
    fps: int = 25
    max_frames: int | None = None
    loop_seconds: float = 4.0  # length of the idle loop made from a still photo
    model: str = "lite"
    max_side: int = MAX_SIDE
    models_dir: Path = ROOT / "models"  # MuseTalk weights, for --model musetalk


@dataclass(frozen=True)
class PrepareReport:
    folder: Path
    frames: int
    faces_detected: int
    faces_interpolated: int
    seconds: float


def default_photo() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain) as BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def even_size(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Scale down to max_side and crop to even width/height (yuv420p needs both even)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        image = cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    return np.ascontiguousarray(image[: height - height % 2, : width - width % 2])


def image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) as the image's header declares them, checked against max_pixels: nothing is decoded
    (Pillow reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above ours: the same answer
        raise SourceTooLarge(f"the image declares over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, over the "
                          f"{max_pixels / 1e6:g} megapixel limit: scale it down before uploading") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AvatarError(f"cannot read the image ({type(exc).__name__}): send a JPEG or PNG file") from None
    check_pixels(width, height, max_pixels, "image")
    return width, height


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise AvatarError(f"the {what} declares no size: send another file")
    if width * height > max_pixels:
        raise SourceTooLarge(f"the {what} is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the "
                          f"{max_pixels / 1e6:g} megapixel limit: scale it down before uploading")


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The even size a frame of width x height gets when scaled down to max_side (never up)."""
    scale = min(1.0, max_side / max(width, height))
    scaled_w, scaled_h = max(2, int(width * scale)), max(2, int(height * scale))
    return scaled_w - scaled_w % 2, scaled_h - scaled_h % 2


def read_image(path: Path, max_side: int = MAX_SIDE, max_pixels: int = MAX_SOURCE_PIXELS) -> np.ndarray:
    """The image scaled down to max_side, judged by its declared size before anything is decoded.

    JPEGs are decoded at 1/2, 1/4 or 1/8 size directly (libjpeg's DCT scaling) when that still
    leaves max_side, so a large photo never exists at full size in memory.
    """
    if not path.is_file():
        raise AvatarError(f"image {path.name} does not exist")
    width, height = image_size(path, max_pixels)
    flags = cv2.IMREAD_COLOR
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if max(width, height) // factor >= max_side:
            flags = reduced
            break
    image = cv2.imread(str(path), flags)
    if image is None:
        raise AvatarError(f"cannot read image {path.name}: is it a JPEG/PNG file?")
    return even_size(image, max_side)


def read_frame_folder(path: Path, max_frames: int | None) -> list[np.ndarray]:
    """A folder of frames named <integer>.png/.jpg (e.g. a LiveTalking avatar's full_imgs/), in order."""
    files = numbered_images(path)
    return read_images(files[:max_frames] if max_frames else files)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    seconds: float


def video_info(path: Path) -> VideoInfo:
    """The first video stream's declared size and the container's duration: nothing is decoded."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AvatarError("the upload has no video stream: send a video or a photo")
            stream = container.streams.video[0]
            if container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
            return VideoInfo(stream.codec_context.width, stream.codec_context.height, seconds)
    except av.error.FFmpegError as exc:
        raise AvatarError(f"cannot read the video ({type(exc).__name__}): send an mp4/webm/mov file") from None


def decoded_bytes(info: VideoInfo, fps: int, max_frames: int | None, max_side: int = MAX_SIDE) -> int:
    """What the video's kept frames take in memory once decoded and scaled (by its declared size and length)."""
    width, height = scaled_size(info.width, info.height, max_side)
    frames = max(1, int(info.seconds * fps) + 1)
    if max_frames:
        frames = min(frames, max_frames)
    return frames * width * height * BGR_BYTES_PER_PIXEL


def read_video(path: Path, fps: int, max_frames: int | None, max_side: int = MAX_SIDE,
               max_pixels: int = MAX_SOURCE_PIXELS, max_bytes: int | None = None) -> list[np.ndarray]:
    """Decode a video, resampled to `fps` by picking the frame due at each tick; or read a folder of frames.

    The stream's declared size is checked before decoding; each kept frame is scaled to max_side
    as it is converted (libswscale), and the kept frames may take at most max_bytes.
    """
    if path.is_dir():
        return read_frame_folder(path, max_frames)
    if not path.is_file():
        raise AvatarError(f"video {path.name} does not exist")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AvatarError(f"cannot read video {path.name}: {type(exc).__name__}") from None
    frames: list[np.ndarray] = []
    kept_bytes = 0
    with container:
        if not container.streams.video:
            raise AvatarError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels, "video")
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                if frame.time is not None and frame.time + 1e-6 < next_time:
                    continue
                check_pixels(frame.width, frame.height, max_pixels, "video")  # the size may change mid-stream
                width, height = scaled_size(frame.width, frame.height, max_side)
                image = frame.to_ndarray(format="bgr24", width=width, height=height, interpolation="AREA")
                kept_bytes += image.nbytes
                if max_bytes is not None and kept_bytes > max_bytes:
                    raise SourceTooLarge(f"the video decodes to more than {max_bytes / 2**20:.0f} MB of frames at "
                                      f"{width}x{height} (after {len(frames)} frames): trim it or lower its resolution")
                frames.append(image)
                next_time += 1.0 / fps
                if max_frames and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            if not frames:
                raise AvatarError(f"cannot decode video {path.name}: {type(exc).__name__}") from None
            logger.warning("video %s is damaged after frame %d (%s): using the frames before", path, len(frames), exc)
    if not frames:
        raise AvatarError(f"{path.name} has no decodable frames")
    return frames


def resolve_version(version: str, models_dir: Path) -> str:
    """'auto': the version of the MuseTalk weights in models_dir (v15 when there are none)."""
    if version != "auto":
        return version
    from musetalk.loader import WeightsError, detect_version

    try:
        return detect_version(models_dir)
    except WeightsError:
        return "v15"


def face_parser_for(models_dir: Path):
    """BiSeNet when models/face-parse-bisent/79999_iter.pth is present, else None (landmark masks)."""
    from avatars.faceparse import FaceParseError, load_face_parser, parser_weights

    if not parser_weights(models_dir).is_file():
        logger.info("no face-parsing weights in %s: blend masks come from the landmarks",
                    parser_weights(models_dir).parent)
        return None
    import torch

    try:
        return load_face_parser(models_dir, "cuda" if torch.cuda.is_available() else "cpu")
    except FaceParseError as exc:
        raise AvatarError(str(exc)) from None


def still_to_loop(image: np.ndarray, landmarks: np.ndarray, options: PrepareOptions,
                  progress: Progress = NO_PROGRESS, span: tuple[float, float] = (0, 0)) -> tuple[list, np.ndarray]:
    count = max(1, int(round(options.loop_seconds * options.fps)))
    if count == 1:
        return [image], landmarks[None]
    animator = IdleAnimator(image, landmarks)
    frames, points = [], []
    for pose in progress.track(loop_poses(count, animator.face_width, options.fps), "idle loop", *span, total=count):
        frame, moved = animator.frame(pose)
        frames.append(frame)
        points.append(moved)
    return frames, np.stack(points)


def prepare_model_data(model: str, folder: Path, options: PrepareOptions) -> None:
    """Engine-specific additions to a freshly written avatar folder (before it goes live).

    lite needs nothing beyond the face data. MuseTalk's VAE latents come from
    musetalk/prepare.py, which needs the MuseTalk weights under models/.
    """
    if model == "musetalk":
        try:
            from musetalk.prepare import prepare_avatar
        except ImportError as exc:
            raise AvatarError(f"MuseTalk preparation is not available ({exc}): build with --model lite") from None
        prepare_avatar(folder, options)


def write_avatar(out_dir: Path, frames: list[np.ndarray], metadata: dict, face: FaceData | None = None,
                 finish: Callable[[Path], None] | None = None, progress: Progress = NO_PROGRESS,
                 span: tuple[float, float] = (0, 0)) -> Path:
    """Write frames (+ face data) + metadata atomically: into a temp folder, then renamed.

    `finish` runs on the temp folder before the rename (engine-specific extras).
    """
    tmp = work_folder(out_dir)
    try:
        _write_into(tmp, frames, metadata, face, finish, progress, span)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    height, width = frames[0].shape[:2]
    logger.info("avatar written to %s (%d frames %dx%d)", out_dir.name, len(frames), width, height)
    return out_dir


def work_folder(out_dir: Path) -> Path:
    """A fresh folder next to out_dir for one build: its name can never be an avatar id (ids do not start
    with '.'), so cleaning it up never touches another avatar, and two builds never share one."""
    return out_dir.with_name(f"{WORK_PREFIX}{out_dir.name}-{uuid.uuid4().hex[:8]}")


def _write_into(tmp: Path, frames: list[np.ndarray], metadata: dict, face: FaceData | None,
                finish: Callable[[Path], None] | None, progress: Progress, span: tuple[float, float]) -> None:
    (tmp / FRAMES_DIR).mkdir(parents=True)
    for index, frame in enumerate(progress.track(frames, "writing frames", *span)):
        cv2.imwrite(str(frame_path(tmp, index)), frame)
    if face is not None:
        (tmp / MASKS_DIR).mkdir()
        for index, mask in enumerate(face.masks):
            cv2.imwrite(str(mask_path(tmp, index)), mask)
        np.save(tmp / LANDMARKS_FILE, face.landmarks.astype(np.float32))
        np.save(tmp / FACE_BOXES_FILE, face.face_boxes.astype(np.int32))
        np.save(tmp / CROP_BOXES_FILE, face.crop_boxes.astype(np.int32))
    height, width = frames[0].shape[:2]
    metadata = {**metadata, "version": AVATAR_FORMAT_VERSION, "frame_count": len(frames),
                "width": width, "height": height, "has_face_data": face is not None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    if finish is not None:
        finish(tmp)


def build_avatar(out_dir: Path, options: PrepareOptions, *, image: np.ndarray | None = None,
                 frames: list[np.ndarray] | None = None, source: str = "",
                 landmarker: FaceLandmarker | None = None, progress: Progress = NO_PROGRESS) -> PrepareReport:
    """Prepare an avatar from one still `image` (made into an idle loop) or video `frames`."""
    if (image is None) == (frames is None):
        raise ValueError("give exactly one of image= or frames=")
    if options.model not in MODELS:
        raise AvatarError(f"unknown model {options.model!r}: choose one of {', '.join(MODELS)}")
    started = time.monotonic()
    options = replace(options, version=resolve_version(options.version, options.models_dir))
    if options.version == "v15" and options.bbox_shift:
        logger.warning("--bbox_shift is ignored for MuseTalk v1.5 geometry (as in MuseTalk): use --musetalk_version v1")
    landmarker = landmarker or FaceLandmarker()
    if image is not None:
        still = even_size(image, options.max_side)
        points, missing = track_faces([still], landmarker, source, progress, (0, 10))
        frames, landmarks = still_to_loop(still, points[0], options, progress, (10, 50))
    else:
        frames = [even_size(frame, options.max_side) for frame in frames]
        landmarks, missing = track_faces(frames, landmarker, source, progress, (0, 50))
    parser = face_parser_for(options.models_dir)
    face = face_geometry(frames, landmarks, options.version, options.extra_margin, options.bbox_shift, parser,
                         progress, (50, 60))
    detected = 1 - missing if image is not None else len(frames) - missing
    metadata = {
        "source": source, "fps": options.fps, "model": options.model, "generator": GENERATOR_VERSION,
        "kind": "photo" if image is not None else "video",
        "musetalk_version": options.version, "parsing_mode": parsing_mode_for(options.version),
        "face_parsing": "bisenet" if parser is not None else "landmarks",
        "bbox_shift": options.bbox_shift if options.version == "v1" else 0,
        "extra_margin": extra_margin_for(options.version, options.extra_margin),
        "faces_detected": detected, "faces_interpolated": missing,
    }
    if image is not None:
        metadata["idle_loop_seconds"] = len(frames) / options.fps
    bank = None
    if image is None:  # a video: its own mouths, indexed by shape, for the lite engine
        bank = MouthBank.build(frames, face.landmarks)
        metadata["real_mouths"] = len(bank.features)
        logger.info("indexed %d real mouths of %d frames", len(bank.features), len(frames))

    def finish(tmp: Path) -> None:
        if bank is not None:
            bank.save(tmp)
        prepare_model_data(options.model, tmp, options)

    write_end = 90 if options.model == "musetalk" else 99
    folder = write_avatar(out_dir, frames, metadata, face, finish=finish, progress=progress, span=(60, write_end))
    progress.set(100)
    seconds = time.monotonic() - started
    logger.info("prepared %s: %d frames, face found in %d, interpolated in %d, %.1f s",
                out_dir.name, len(frames), detected, missing, seconds)
    return PrepareReport(folder, len(frames), detected, missing, seconds)
