"""Avatar preparation: a photo or video -> data/avatars/<id>/ (format in data/avatars/README.md).

    python genavatar.py --default                      # the bundled public-domain photo
    python genavatar.py --image me.jpg --avatar_id me
    python genavatar.py --video me.mp4 --avatar_id me --max_frames 250
    python genavatar.py --video data/avatars/wav2lip256_avatar1/full_imgs --avatar_id mine   # a folder of frames

Per frame it stores the 68 face landmarks (dlib), MuseTalk's face box, the
1.5x square crop box and a feathered lower-face blend mask, with MuseTalk
v1.5's or v1.0's geometry (--musetalk_version). The mask comes from BiSeNet
face parsing when models/face-parse-bisent/ holds its weights, else from the
landmarks (avatars/facemask.py). A still photo is turned into a seamless idle loop
(head sway, breathing, blinks); a video's own mouths are indexed by shape
(lite/mouthbank.py) for the lite engine to show. Frames of a
video where no face is found get landmarks interpolated from their neighbours.
The work itself is avatars/prepare.py; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avatars.facegeom import DEFAULT_EXTRA_MARGIN
from avatars.format import AvatarError, check_avatar_id
from avatars.prepare import (DEFAULT_AVATAR_ID, GEOMETRY_VERSIONS, MODELS, ROOT, PrepareOptions, PrepareReport,
                             build_avatar, default_photo, read_image, read_video)

logger = logging.getLogger("genavatar")


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
    parser.add_argument("--avatar-id", "--avatar_id", dest="avatar_id", default=DEFAULT_AVATAR_ID)
    parser.add_argument("--bbox-shift", "--bbox_shift", dest="bbox_shift", type=int, default=0,
                        help="pixels added to the nose point that splits the face box (MuseTalk v1.0)")
    parser.add_argument("--extra-margin", "--extra_margin", dest="extra_margin", type=int, default=DEFAULT_EXTRA_MARGIN,
                        help="pixels added below the chin (MuseTalk v1.5)")
    parser.add_argument("--musetalk-version", "--musetalk_version", dest="musetalk_version",
                        choices=GEOMETRY_VERSIONS, default="auto",
                        help="face box and mask of MuseTalk v1.5 (margin, 'jaw' mask) or v1.0 ('raw' mask); "
                             "auto: the version of the weights in --models-dir, else v15")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--max-frames", "--max_frames", dest="max_frames", type=int, default=None)
    parser.add_argument("--loop-seconds", "--loop_seconds", dest="loop_seconds",
                        type=float, default=PrepareOptions.loop_seconds,
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
