"""Paste-back only touches the mask's box inside the face box, and equals the plain formula."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from blending import BlendPlan, paste_back


def reference_paste(frame, face, face_box, crop_box, mask):
    """MuseTalk's rule written out over the whole crop, for comparison."""
    x1, y1, x2, y2 = face_box
    cx1, cy1, cx2, cy2 = crop_box
    height, width = frame.shape[:2]
    canvas = np.zeros((height + 2000, width + 2000, 3), np.float32)
    canvas[1000 : 1000 + height, 1000 : 1000 + width] = frame
    target = canvas.copy()
    target[1000 + y1 : 1000 + y2, 1000 + x1 : 1000 + x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    alpha = np.zeros(canvas.shape[:2] + (1,), np.float32)
    alpha[1000 + cy1 : 1000 + cy2, 1000 + cx1 : 1000 + cx2, 0] = mask / 255.0
    out = canvas + alpha * (target - canvas)
    return np.clip(out[1000 : 1000 + height, 1000 : 1000 + width] + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("face_box, crop_box", [
    ((60, 70, 140, 170), (40, 60, 160, 180)),
    ((-10, 100, 60, 200), (-40, 80, 80, 200)),  # partly off the image
    ((150, 150, 200, 200), (120, 120, 230, 230)),
])
def test_paste_back_matches_the_rule(face_box, crop_box):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (200, 200, 3), np.uint8)
    face = rng.integers(0, 255, (64, 64, 3), np.uint8)
    side = crop_box[2] - crop_box[0]
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side * 3 // 4), side // 4, 255, -1)
    mask = cv2.GaussianBlur(mask, (15, 15), 0)
    plan = BlendPlan.build(frame.shape, face_box, crop_box, mask)
    out = paste_back(frame, face, plan)
    assert np.abs(out.astype(int) - reference_paste(frame, face, face_box, crop_box, mask)).max() <= 1
    assert plan.paste_alpha.shape[0] * plan.paste_alpha.shape[1] < side * side  # only the mask's box
    frame.setflags(write=False)
    paste_back(frame, face, plan)  # the shared avatar frame is never written
