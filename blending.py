"""Paste-back of a generated face/mouth region into the full avatar frame.

MuseTalk's rule: the generated face (for the face box) is resized to the box,
placed inside the expanded square crop box, and blended into the frame with a
per-frame feathered mask of crop-box size (alpha = mask / 255). Everything that
does not depend on the generated pixels (clipping of the crop box to the image,
the float alpha, the face box position inside the crop, and the rectangle where
alpha is non-zero *and* the face box lies) is computed once per avatar frame by
`BlendPlan` and reused for every spoken frame, so each frame only blends the
pixels that can change. The lite engine uses the same plan with its warped
mouth patch as the "face".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class BlendPlan:
    """Precomputed geometry and alpha for one avatar frame."""

    frame_slice: tuple[slice, slice]  # where the visible part of the crop box lies in the frame
    crop_slice: tuple[slice, slice]  # the same region in crop-box coordinates
    face_box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame coordinates
    crop_origin: tuple[int, int]  # crop box x1, y1 in frame coordinates
    alpha: np.ndarray  # (h, w, 1) float32 in [0, 1] over the visible crop region
    paste_slice: tuple[slice, slice] = (slice(0, 0), slice(0, 0))  # frame region that can change
    face_slice: tuple[slice, slice] = (slice(0, 0), slice(0, 0))  # the same region in face-box coordinates
    paste_alpha: np.ndarray | None = None  # (h, w, 1) float32 alpha over paste_slice

    @staticmethod
    def build(frame_shape: tuple[int, ...], face_box, crop_box, mask: np.ndarray) -> "BlendPlan":
        height, width = frame_shape[:2]
        cx1, cy1, cx2, cy2 = (int(v) for v in crop_box)
        if mask.shape[:2] != (cy2 - cy1, cx2 - cx1):
            raise ValueError(f"mask {mask.shape[:2]} does not match crop box {cx2 - cx1}x{cy2 - cy1}")
        fx1, fy1, fx2, fy2 = max(cx1, 0), max(cy1, 0), min(cx2, width), min(cy2, height)
        crop_slice = (slice(fy1 - cy1, fy2 - cy1), slice(fx1 - cx1, fx2 - cx1))
        alpha = (mask[crop_slice].astype(np.float32) / 255.0)[..., None]
        alpha.setflags(write=False)
        face = tuple(int(v) for v in face_box)

        # Only pixels inside the face box with alpha > 0 can change: find that rectangle once.
        px1, py1, px2, py2 = max(fx1, face[0]), max(fy1, face[1]), min(fx2, face[2]), min(fy2, face[3])
        paste_alpha = np.zeros((0, 0, 1), np.float32)
        if px2 > px1 and py2 > py1:
            sub = alpha[py1 - fy1 : py2 - fy1, px1 - fx1 : px2 - fx1, 0]
            rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
            if rows.size:
                py1, py2 = py1 + int(rows[0]), py1 + int(rows[-1]) + 1
                px1, px2 = px1 + int(cols[0]), px1 + int(cols[-1]) + 1
                paste_alpha = np.ascontiguousarray(alpha[py1 - fy1 : py2 - fy1, px1 - fx1 : px2 - fx1])
            else:
                px2, py2 = px1, py1
        else:
            px2, py2 = px1, py1
        paste_alpha.setflags(write=False)
        return BlendPlan(
            frame_slice=(slice(fy1, fy2), slice(fx1, fx2)),
            crop_slice=crop_slice,
            face_box=face,
            crop_origin=(cx1, cy1),
            alpha=alpha,
            paste_slice=(slice(py1, py2), slice(px1, px2)),
            face_slice=(slice(py1 - face[1], py2 - face[1]), slice(px1 - face[0], px2 - face[0])),
            paste_alpha=paste_alpha,
        )


def paste_back(frame: np.ndarray, face: np.ndarray, plan: BlendPlan) -> np.ndarray:
    """A new frame with `face` (any size; resized to the face box) blended in.

    `frame` is not modified (avatar frames are shared read-only). Only the
    precomputed rectangle where the mask is non-zero inside the face box is
    blended; the rest of the frame is a plain copy.
    """
    x1, y1, x2, y2 = plan.face_box
    if face.shape[:2] != (y2 - y1, x2 - x1):
        face = cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    out = frame.copy()
    alpha = plan.paste_alpha
    if alpha is None or alpha.size == 0:
        return out
    region = frame[plan.paste_slice].astype(np.float32)
    target = face[plan.face_slice].astype(np.float32)
    region += alpha * (target - region)
    region += 0.5
    np.clip(region, 0, 255, out=region)
    out[plan.paste_slice] = region.astype(np.uint8)
    return out
