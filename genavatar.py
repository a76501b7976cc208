"""Avatar preparation: a photo or video -> data/avatars/<id>/ (format in data/avatars/README.md).

    python genavatar.py --default                      # the bundled public-domain photo
    python genavatar.py --image me.jpg --avatar_id me
    python genavatar.py --video me.mp4 --avatar_id me --max_frames 250
    python genavatar.py --video data/avatars/wav2lip256_avatar1/full_imgs --avatar_id mine   # a folder of frames

Per frame it stores the 68 face landmarks (dlib), MuseTalk's face box, the
1.5x square crop box and a feathered lower-face blend mask, with MuseTalk
v1.5's or v1.0's geometry (--musetalk_version). The mask comes from BiSeNet
face parsing when models/face-parse-bisent/ holds its weights, else from the
landmarks (facemask.py). A still photo is turned into a seamless idle loop
(head sway, breathing, blinks); a video's own mouths are indexed by shape
(mouthbank.py) for the lite engine to show. Frames of a
video where no face is found get landmarks interpolated from their neighbours.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np
from tqdm import tqdm

from avatars.store import (AVATAR_FORMAT_VERSION, CROP_BOXES_FILE, FACE_BOXES_FILE, FRAMES_DIR, LANDMARKS_FILE, MASKS_DIR,
                    METADATA_FILE, AvatarError, check_avatar_id, frame_path, mask_path)
from avatars.facegeom import (DEFAULT_EXTRA_MARGIN, FaceError, FaceLandmarker, crop_box, extra_margin_for, face_box,
                      landmark_box)
from avatars.facemask import lower_face_mask, parsing_mode_for
from avatars.idleloop import IdleAnimator, loop_poses
from avatars.livetalking import numbered_images, read_images
from lite.mouthbank import MouthBank

logger = logging.getLogger("genavatar")

ROOT = Path(__file__).resolve().parent
DEFAULT_AVATAR_ID = "default"
MAX_SIDE = 1280
MODELS = ("lite", "musetalk")
GEOMETRY_VERSIONS = ("auto", "v15", "v1")  # MuseTalk's face box and mask differ between v1.0 and v1.5
GENERATOR_VERSION = "genavatar-2"


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
class FaceData:
    """Per-frame face geometry, in the layout avatar.py reads."""

    landmarks: np.ndarray  # (N, 68, 2) float32
    face_boxes: np.ndarray  # (N, 4) int32
    crop_boxes: np.ndarray  # (N, 4) int32
    masks: list[np.ndarray]  # crop-box sized uint8


@dataclass(frozen=True)
class PrepareReport:
    folder: Path
    frames: int
    faces_detected: int
    faces_interpolated: int
    seconds: float


class Progress:
    """Reports preparation progress 0-100 (for HTTP avatar tasks) beside the tqdm bars.

    Each stage owns a span of the whole: `track` walks an iterable with a tqdm
    bar and reports the fraction done mapped into [start, end].
    """

    def __init__(self, report: Callable[[float], None] | None = None):
        self.report = report

    def track(self, items, desc: str, start: float, end: float, total: int | None = None):
        total = total if total is not None else len(items)
        for done, item in enumerate(tqdm(items, desc=desc, unit="frame", total=total), 1):
            yield item
            self.set(start + (end - start) * done / max(total, 1))

    def set(self, percent: float) -> None:
        if self.report is not None:
            self.report(min(100.0, percent))


NO_PROGRESS = Progress()


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


def read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AvatarError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise AvatarError(f"cannot read image {path}: is it a JPEG/PNG file?")
    return image


def read_frame_folder(path: Path, max_frames: int | None) -> list[np.ndarray]:
    """A folder of frames named <integer>.png/.jpg (e.g. a LiveTalking avatar's full_imgs/), in order."""
    files = numbered_images(path)
    return read_images(files[:max_frames] if max_frames else files)


def read_video(path: Path, fps: int, max_frames: int | None) -> list[np.ndarray]:
    """Decode a video, resampled to `fps` by picking the frame due at each tick; or read a folder of frames."""
    if path.is_dir():
        return read_frame_folder(path, max_frames)
    if not path.is_file():
        raise AvatarError(f"video {path} does not exist")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AvatarError(f"cannot read video {path}: {exc}") from None
    frames: list[np.ndarray] = []
    with container:
        if not container.streams.video:
            raise AvatarError(f"{path} has no video stream")
        next_time = 0.0
        try:
            for frame in container.decode(video=0):
                if frame.time is not None and frame.time + 1e-6 < next_time:
                    continue
                frames.append(frame.to_ndarray(format="bgr24"))
                next_time += 1.0 / fps
                if max_frames and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            if not frames:
                raise AvatarError(f"cannot decode video {path}: {exc}") from None
            logger.warning("video %s is damaged after frame %d (%s): using the frames before", path, len(frames), exc)
    if not frames:
        raise AvatarError(f"{path} has no decodable frames")
    return frames


def interpolate_missing(found: list[np.ndarray | None]) -> np.ndarray:
    """Fill frames without a face from their neighbours (linear in time; nearest at the ends)."""
    known = [i for i, lm in enumerate(found) if lm is not None]
    stacked = np.stack([found[i] for i in known]).reshape(len(known), -1)
    filled = np.empty((len(found), stacked.shape[1]), np.float32)
    for column in range(stacked.shape[1]):
        filled[:, column] = np.interp(np.arange(len(found)), known, stacked[:, column])
    return filled.reshape(len(found), 68, 2)


def smooth_track(landmarks: np.ndarray) -> np.ndarray:
    """Light temporal smoothing of a video's landmarks (dlib jitters by a pixel or so)."""
    if len(landmarks) < 3:
        return landmarks
    padded = np.concatenate([landmarks[:1], landmarks, landmarks[-1:]])
    return (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).astype(np.float32)


def resolve_version(version: str, models_dir: Path) -> str:
    """'auto': the version of the MuseTalk weights in models_dir (v15 when there are none)."""
    if version != "auto":
        return version
    from musetalk.loader import WeightsError, detect_version

    try:
        return detect_version(models_dir)
    except WeightsError:
        return "v15"


def expanded_crop(frame: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """The crop box's pixels; parts outside the frame are black (as MuseTalk's PIL crop)."""
    x1, y1, x2, y2 = (int(v) for v in crop)
    height, width = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), frame.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return out


def face_geometry(frames: list[np.ndarray], landmarks: np.ndarray, options: PrepareOptions,
                  parser=None, progress: Progress = NO_PROGRESS, span: tuple[float, float] = (0, 0)) -> FaceData:
    """Per frame: MuseTalk's face box and crop box for options.version, and the blend mask
    (from `parser`, a faceparse.FaceParser, when given; else from the landmarks)."""
    if options.version not in ("v15", "v1"):
        raise ValueError(f"geometry version must be v15 or v1, not {options.version!r}")
    margin = extra_margin_for(options.version, options.extra_margin)
    shift = options.bbox_shift if options.version == "v1" else 0
    mode = parsing_mode_for(options.version)
    face_boxes, crop_boxes, masks = [], [], []
    source = "face parsing" if parser is not None else "landmark"
    for frame, points in progress.track(list(zip(frames, landmarks)), f"{source} masks", *span):
        box = face_box(points, frame.shape, shift, margin)
        crop = crop_box(box)
        labels = parser.parse(expanded_crop(frame, crop)) if parser is not None else None
        face_boxes.append(box)
        crop_boxes.append(crop)
        masks.append(lower_face_mask(points, box, crop, mode, labels))
    return FaceData(landmarks.astype(np.float32), np.stack(face_boxes), np.stack(crop_boxes), masks)


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


def track_faces(frames: list[np.ndarray], landmarker: FaceLandmarker, source: str,
                progress: Progress = NO_PROGRESS, span: tuple[float, float] = (0, 0)) -> tuple[np.ndarray, int]:
    """Landmarks for every frame and how many frames needed interpolation."""
    found: list[np.ndarray | None] = []
    near = None
    for frame in progress.track(frames, "finding faces", *span):
        points = landmarker.landmarks(frame, near=near)
        found.append(points)
        if points is not None:
            near = landmark_box(points)
    missing = sum(lm is None for lm in found)
    if missing == len(found):
        raise FaceError(
            f"no face found in {source}: use a photo or video with one clearly visible, roughly frontal face "
            f"at least 80 px wide"
        )
    if missing:
        logger.warning("no face in %d of %d frames: their landmarks are interpolated from neighbouring frames",
                       missing, len(found))
    return smooth_track(interpolate_missing(found)), missing


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
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
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
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    logger.info("avatar written to %s (%d frames %dx%d)", out_dir, len(frames), width, height)
    return out_dir


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
    face = face_geometry(frames, landmarks, options, parser, progress, (50, 60))
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


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(bbox_shift=args.bbox_shift, extra_margin=args.extra_margin, fps=args.fps,
                          max_frames=args.max_frames, loop_seconds=args.loop_seconds, model=args.model,
                          models_dir=args.models_dir, version=args.musetalk_version)


def prepare(args: argparse.Namespace) -> PrepareReport:
    avatar_id = check_avatar_id(args.avatar_id)
    options = options_from_args(args)
    out_dir = args.data_dir / "avatars" / avatar_id
    if args.default:
        return build_avatar(out_dir, options, image=default_photo(), source="skimage.data.astronaut")
    if args.image:
        return build_avatar(out_dir, options, image=read_image(args.image), source=str(args.image))
    return build_avatar(out_dir, options, frames=read_video(args.video, args.fps, args.max_frames),
                        source=str(args.video))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="a video file, or a folder of frames named 0.png, 1.png, ...")
    source.add_argument("--image", type=Path)
    source.add_argument("--default", action="store_true", help="build the default avatar from the bundled photo")
    parser.add_argument("--avatar_id", default=DEFAULT_AVATAR_ID)
    parser.add_argument("--bbox_shift", type=int, default=0,
                        help="pixels added to the nose point that splits the face box (MuseTalk v1.0)")
    parser.add_argument("--extra_margin", type=int, default=DEFAULT_EXTRA_MARGIN,
                        help="pixels added below the chin (MuseTalk v1.5)")
    parser.add_argument("--musetalk_version", choices=GEOMETRY_VERSIONS, default="auto",
                        help="face box and mask of MuseTalk v1.5 (margin, 'jaw' mask) or v1.0 ('raw' mask); "
                             "auto: the version of the weights in --models-dir, else v15")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--max_frames", type=int, default=None)
    parser.add_argument("--loop_seconds", type=float, default=PrepareOptions.loop_seconds,
                        help="length of the idle loop made from a photo")
    parser.add_argument("--model", choices=MODELS, default="lite",
                        help="musetalk also precomputes its VAE latents (needs its weights)")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = prepare(args)
    except AvatarError as exc:
        logger.error("%s", exc)
        return 2
    print(f"avatar {report.folder.name}: {report.frames} frames, face found in {report.faces_detected}, "
          f"interpolated in {report.faces_interpolated} ({report.seconds:.1f} s) -> {report.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
