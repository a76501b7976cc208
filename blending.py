"""Paste-back of a generated face/mouth region into the full avatar frame.

MuseTalk's rule: the generated face (for the face box) is resized to the box,
placed inside the expanded square crop box, and blended into the frame with a
per-frame feathered mask of crop-box size (alpha = mask / 255). Everything that
does not depend on the generated pixels (clipping of the crop box to the image,
the float alpha, the face box position inside the crop) is computed once per
avatar frame by `BlendPlan` and reused for every spoken frame.
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
        return BlendPlan(
            frame_slice=(slice(fy1, fy2), slice(fx1, fx2)),
            crop_slice=crop_slice,
            face_box=tuple(int(v) for v in face_box),
            crop_origin=(cx1, cy1),
            alpha=alpha,
        )


def paste_back(frame: np.ndarray, face: np.ndarray, plan: BlendPlan) -> np.ndarray:
    """A new frame with `face` (any size; resized to the face box) blended in.

    `frame` is not modified (avatar frames are shared read-only).
    """
    x1, y1, x2, y2 = plan.face_box
    face = cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    out = frame.copy()
    region = out[plan.frame_slice]
    # The generated face expressed over the visible crop region.
    target = region.copy()
    ox, oy = plan.frame_slice[1].start, plan.frame_slice[0].start
    tx1, ty1 = max(x1 - ox, 0), max(y1 - oy, 0)
    tx2, ty2 = min(x2 - ox, region.shape[1]), min(y2 - oy, region.shape[0])
    if tx2 > tx1 and ty2 > ty1:
        sx1, sy1 = tx1 - (x1 - ox), ty1 - (y1 - oy)
        target[ty1:ty2, tx1:tx2] = face[sy1 : sy1 + ty2 - ty1, sx1 : sx1 + tx2 - tx1]
    blended = region.astype(np.float32) + plan.alpha * (target.astype(np.float32) - region)
    out[plan.frame_slice] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out
