"""MuseTalk fidelity on tiny weights: the fp16 decode tail, the blend mask, v1.0/v1.5 geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk.loader import load_vae, place
from musetalk.vae import decode_to_bgr, scaling_factor
from tests.support.musetalk_fixtures import write_tiny_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("fidelity") / "models")


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 4, 32, 32) * 3  # wide enough that the faces span 0..255


def _exact_tail(sample: torch.Tensor) -> np.ndarray:
    """MuseTalk's decode tail in float64: (x / 2 + 0.5) clamped, x 255, rounded, RGB -> BGR."""
    pixels = ((sample.double() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()[..., ::-1]


def test_fp16_decode_tail_is_exact(vae_dir, latents):
    """With the decoder in fp16, the pixels equal an exact tail applied to the decoder's own output."""
    vae = place(load_vae(vae_dir), CPU, torch.float16)
    with torch.inference_mode():
        faces = decode_to_bgr(vae, latents.half())
        sample = vae.decode(latents.half() / scaling_factor(vae)).sample
    exact = _exact_tail(sample)
    assert faces.shape == (2, 256, 256, 3) and faces.flags.c_contiguous
    assert faces.min() == 0 and faces.max() == 255  # the test covers the top of the range, where fp16 is coarse
    assert (faces == exact).mean() >= 0.999


def test_fp16_and_fp32_decode_agree_within_one_level(vae_dir, latents):
    with torch.inference_mode():
        full = decode_to_bgr(place(load_vae(vae_dir), CPU, torch.float32), latents)
        half = decode_to_bgr(place(load_vae(vae_dir), CPU, torch.float16), latents.half())
    difference = np.abs(full.astype(np.int16) - half)
    assert (difference <= 1).mean() >= 0.999, (difference <= 1).mean()


# ---- blend mask and v1.0 / v1.5 geometry ----------------------------------------------------

def _border(mask: np.ndarray, box: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Mask values (0..1) on the face box's outermost pasted columns and bottom row."""
    x1, y1, x2, y2 = (int(v) for v in np.asarray(box) - np.r_[crop[:2], crop[:2]])
    return np.concatenate([mask[y1:y2, x1], mask[y1:y2, x2 - 1], mask[y2 - 1, x1:x2]]) / 255.0


@pytest.fixture(scope="module")
def astronaut_face(landmarker):
    from avatars.prepare import default_photo, even_size

    image = even_size(default_photo())
    return image, landmarker.landmarks(image)


@pytest.mark.parametrize("version", ["v15", "v1"])
def test_blend_mask_fades_to_half_at_the_face_box(astronaut_face, version):
    from avatars.tracking import face_geometry

    image, landmarks = astronaut_face
    face = face_geometry([image], landmarks[None], version)
    box, crop, mask = face.face_boxes[0], face.crop_boxes[0], face.masks[0]
    assert _border(mask, box, crop).max() <= 0.55
    local = landmarks - crop[:2]
    mouth = np.round(local[[62, 66]].mean(0)).astype(int)
    assert mask[mouth[1], mouth[0]] == 255  # the mouth is fully replaced
    side = crop[3] - crop[1]
    blur_reach = int(0.1 * side) // 2 + 1
    assert not mask[: side // 2 - blur_reach].any()  # nothing above the upper boundary (blur aside)


def test_mask_is_clipped_to_the_face_box_before_the_blur():
    """Parsing that calls the whole crop skin (what BiSeNet does on a big face): the mask still
    fades inside the face box instead of ending at full strength on its edge."""
    from avatars.facemask import SKIN, PARSE_SIZE, blend_mask, region_from_labels

    crop = np.array([0, 0, 300, 300])
    box = np.array([60, 40, 240, 260])
    mask = blend_mask(region_from_labels(np.full((PARSE_SIZE, PARSE_SIZE), SKIN, np.uint8), "raw"), box, crop)
    assert _border(mask, box, crop).max() <= 0.55
    assert mask[200, 150] == 255 and mask[:, :60].max() < 128 and mask[260:].max() < 128


def test_v1_and_v15_geometry_differ_as_in_musetalk(astronaut_face):
    from avatars.facemask import LOWER_LIP, SKIN, parsing_mode_for, region_from_labels
    from avatars.tracking import face_geometry

    assert (parsing_mode_for("v1"), parsing_mode_for("v15")) == ("raw", "jaw")

    image, landmarks = astronaut_face
    v15 = face_geometry([image], landmarks[None], "v15", extra_margin=10, bbox_shift=6)
    v1 = face_geometry([image], landmarks[None], "v1", extra_margin=10, bbox_shift=0)
    bottom = int(np.ceil(landmarks[:, 1].max()))
    assert v15.face_boxes[0][3] == bottom + 10  # extra_margin below the chin: v1.5 only
    assert v1.face_boxes[0][3] == bottom
    assert v15.face_boxes[0][1] == v1.face_boxes[0][1]  # the top is unchanged; v1.5 ignores bbox_shift
    # 'jaw' (v1.5) grows the skin downward and pulls the cheeks in; 'raw' (v1.0) keeps the parsed region
    labels = np.zeros((512, 512), np.uint8)
    labels[150:400, 100:412] = SKIN
    labels[330:350, 220:292] = LOWER_LIP
    raw, jaw = region_from_labels(labels, "raw"), region_from_labels(labels, "jaw")
    assert raw[399, 256] == 255 and raw[410, 256] == 0 and jaw[410, 256] == 255  # below the jaw line
    assert raw[300, 105] == 255 and jaw[300, 105] == 0  # the cheek band, outside +-90 px of the centre
    assert (raw[labels == LOWER_LIP] == 255).all() and (jaw[labels == LOWER_LIP] == 255).all()
