"""MuseTalk's blend mask: which part of the expanded crop the generated face replaces.

The official rule: label the expanded crop (face parsing, CelebAMask-HQ labels
on a 512x512 grid), keep a region that depends on the parsing mode, keep only
what lies inside the face box and below the crop's upper-boundary line, then
feather with a Gaussian whose kernel is 10 % of the crop width.

* 'raw' (MuseTalk v1.0): skin, mouth and lips.
* 'jaw' (v1.5): skin grown downward (a dropped jaw stays inside), pulled in
  at the cheeks, the nose left out, mouth and lips added. The kernels are our
  own, built from the published description (a cone with a tail, a 35x3
  ellipse eroding the side bands outside +-90 px of the centre).

Labels come from the BiSeNet face-parsing network when its weights are
present (faceparse.py), else from the 68 landmarks (`landmark_labels`).
The mask is clipped to the face box one pixel inside its edge before the
blur, so it fades to at most ~0.5 where paste-back stops (no hard seam).
"""

from __future__ import annotations

import cv2
import numpy as np

PARSE_SIZE = 512  # the grid face parsing works on
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP = 1, 10, 11, 12, 13  # CelebAMask-HQ labels BiSeNet predicts
LIPS_AND_MOUTH = (MOUTH, UPPER_LIP, LOWER_LIP)
PARSING_MODES = ("raw", "jaw")
UPPER_BOUNDARY_RATIO = 0.5  # rows above this fraction of the crop height are never replaced
BLUR_RATIO = 0.1  # Gaussian kernel as a fraction of the crop width (MuseTalk realtime)
CHEEK_WIDTH = 90  # jaw mode: side bands beyond +-90 px of the centre (512 grid) are eroded
CONE_HEIGHT, TAIL_LENGTH = 21, 12  # jaw mode: downward growth of the skin (512 grid)
CHEEK_ERODE_KERNEL = (35, 3)  # width, height of the ellipse eroding the cheek bands
CHEEK_ERODE_TIMES = 2

FACE_OUTLINE = [*range(0, 17), *range(26, 16, -1)]  # jaw line, then the brows right to left
NOSE_POINTS = [27, 31, 32, 33, 34, 35]
UPPER_LIP_POINTS = [48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]
LOWER_LIP_POINTS = [54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]
INNER_MOUTH_POINTS = list(range(60, 68))


def parsing_mode_for(version: str) -> str:
    """MuseTalk uses 'raw' with v1.0 and 'jaw' with v1.5."""
    return "raw" if version == "v1" else "jaw"


def landmark_labels(landmarks: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """(512, 512) uint8 CelebAMask-style labels of the crop drawn from 68 landmarks (the offline fallback)."""
    cx1, cy1, cx2, cy2 = (int(v) for v in crop)
    scale = np.array([PARSE_SIZE / (cx2 - cx1), PARSE_SIZE / (cy2 - cy1)], np.float32)
    local = (landmarks - np.array([cx1, cy1], np.float32)) * scale
    labels = np.zeros((PARSE_SIZE, PARSE_SIZE), np.uint8)

    def fill(points: list[int], label: int, hull: bool = False) -> None:
        polygon = np.round(local[points]).astype(np.int32)
        if hull:
            polygon = cv2.convexHull(polygon)
        cv2.fillPoly(labels, [polygon.reshape(-1, 2)], label)

    fill(FACE_OUTLINE, SKIN, hull=True)
    fill(NOSE_POINTS, NOSE, hull=True)
    fill(UPPER_LIP_POINTS, UPPER_LIP)
    fill(LOWER_LIP_POINTS, LOWER_LIP)
    fill(INNER_MOUTH_POINTS, MOUTH)
    return labels


def _cone_kernel() -> np.ndarray:
    """Dilation kernel that grows a region downward: a cone narrowing over CONE_HEIGHT rows, then a tail."""
    reach = CONE_HEIGHT + TAIL_LENGTH
    size = 2 * reach + 1
    kernel = np.zeros((size, size), np.uint8)
    for depth in range(reach + 1):
        # row reach - depth: a pixel takes the region from `depth` rows above it
        half = max(0, (CONE_HEIGHT - depth) // 2) if depth <= CONE_HEIGHT else 0
        kernel[reach - depth, reach - half: reach + half + 1] = 1
    return kernel


def region_from_labels(labels: np.ndarray, mode: str) -> np.ndarray:
    """uint8 0/255 region on the parsing grid for MuseTalk's parsing `mode`."""
    if mode not in PARSING_MODES:
        raise ValueError(f"parsing mode must be one of {PARSING_MODES}")
    lips = np.isin(labels, LIPS_AND_MOUTH)
    if mode == "raw":
        return np.where((labels == SKIN) | lips, 255, 0).astype(np.uint8)
    skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
    grown = cv2.dilate(skin, _cone_kernel())
    eroded = cv2.erode(grown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, CHEEK_ERODE_KERNEL),
                       iterations=CHEEK_ERODE_TIMES)
    width = labels.shape[1]
    centre = width // 2
    scale = width / PARSE_SIZE
    sides = np.zeros(width, bool)
    sides[: max(0, int(centre - CHEEK_WIDTH * scale))] = True
    sides[int(centre + CHEEK_WIDTH * scale):] = True
    region = np.where(sides[None, :], eroded, grown)
    region[labels == NOSE] = 0
    region[lips] = 255
    return region


def blend_mask(region: np.ndarray, face_box: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """uint8 mask of crop-box size: `region` (any grid) resized to the crop, kept inside the face box
    and below the upper boundary, then feathered."""
    cx1, cy1, cx2, cy2 = (int(v) for v in crop)
    width, height = cx2 - cx1, cy2 - cy1
    mask = cv2.resize(region, (width, height), interpolation=cv2.INTER_LINEAR)
    fx1, fy1, fx2, fy2 = (int(v) for v in face_box)
    inside = np.zeros_like(mask)
    # one pixel inside the box: after the blur the last pasted row/column is at most ~0.5
    top, bottom = max(fy1 - cy1 + 1, int(height * UPPER_BOUNDARY_RATIO)), fy2 - cy1 - 1
    left, right = fx1 - cx1 + 1, fx2 - cx1 - 1
    top, left = max(top, 0), max(left, 0)
    if bottom > top and right > left:
        inside[top:bottom, left:right] = mask[top:bottom, left:right]
    blur = int(BLUR_RATIO * width) // 2 * 2 + 1
    return cv2.GaussianBlur(inside, (blur, blur), 0)


def lower_face_mask(landmarks: np.ndarray, face_box: np.ndarray, crop: np.ndarray, mode: str = "jaw",
                    labels: np.ndarray | None = None) -> np.ndarray:
    """The blend mask of one frame from parsing `labels` (512x512) or, without them, from the landmarks."""
    if labels is None:
        labels = landmark_labels(landmarks, crop)
    return blend_mask(region_from_labels(labels, mode), face_box, crop)
