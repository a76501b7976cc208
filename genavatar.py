"""Avatar preparation: a photo or video -> data/avatars/<id>/ (format in data/avatars/README.md).

    python genavatar.py --default                      # the bundled public-domain photo
    python genavatar.py --image me.jpg --avatar_id me
    python genavatar.py --video me.mp4 --avatar_id me --max_frames 250
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from avatar import AVATAR_FORMAT_VERSION, FRAMES_DIR, METADATA_FILE, AvatarError, check_avatar_id, frame_path

logger = logging.getLogger("genavatar")

ROOT = Path(__file__).resolve().parent
DEFAULT_AVATAR_ID = "default"
MAX_SIDE = 1280


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
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise AvatarError(f"cannot read image {path}: is it a JPEG/PNG file?")
    return image


def read_video(path: Path, fps: int, max_frames: int | None) -> list[np.ndarray]:
    """Decode a video, resampled to `fps` by picking the frame due at each tick."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AvatarError(f"cannot read video {path}: {exc}") from None
    frames: list[np.ndarray] = []
    with container:
        if not container.streams.video:
            raise AvatarError(f"{path} has no video stream")
        next_time = 0.0
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time + 1e-6 < next_time:
                continue
            frames.append(frame.to_ndarray(format="bgr24"))
            next_time += 1.0 / fps
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise AvatarError(f"{path} has no decodable frames")
    return frames


def write_avatar(out_dir: Path, frames: list[np.ndarray], metadata: dict) -> Path:
    """Write frames + metadata atomically (into a temp folder, then renamed)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / FRAMES_DIR).mkdir(parents=True)
    for index, frame in enumerate(tqdm(frames, desc="writing frames", unit="frame")):
        cv2.imwrite(str(frame_path(tmp, index)), frame)
    height, width = frames[0].shape[:2]
    metadata = {**metadata, "version": AVATAR_FORMAT_VERSION, "frame_count": len(frames),
                "width": width, "height": height, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    logger.info("avatar written to %s (%d frames %dx%d)", out_dir, len(frames), width, height)
    return out_dir


def prepare(args: argparse.Namespace) -> Path:
    avatar_id = check_avatar_id(args.avatar_id)
    if args.default:
        frames, source = [default_photo()], "skimage.data.astronaut"
    elif args.image:
        frames, source = [read_image(args.image)], str(args.image)
    else:
        frames, source = read_video(args.video, args.fps, args.max_frames), str(args.video)
    frames = [even_size(frame) for frame in frames]
    folder = write_avatar(args.data_dir / "avatars" / avatar_id, frames, {"source": source, "fps": args.fps})
    if args.model == "musetalk":
        from musetalk.prepare import prepare_musetalk_avatar

        prepare_musetalk_avatar(folder, args.models_dir)
    return folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path)
    source.add_argument("--image", type=Path)
    source.add_argument("--default", action="store_true", help="build the default avatar from the bundled photo")
    parser.add_argument("--avatar_id", default=DEFAULT_AVATAR_ID)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--max_frames", type=int, default=None)
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    parser.add_argument("--model", choices=["lite", "musetalk"], default="lite",
                        help="musetalk also stores the VAE latents its UNet needs (latents.pt)")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        prepare(args)
    except AvatarError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
