"""Avatar preparation for MuseTalk: per-frame UNet input latents, saved as latents.pt.

For each avatar frame the face box is cropped, resized to 256x256 (Lanczos),
and VAE-encoded twice: with its lower half blacked out (what the UNet fills
in) and whole (the reference). Done once per avatar; every session reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatars.format import AvatarError

from avatars.store import load_avatar
from musetalk.loader import MuseTalkModels, WeightsError, load_models
from musetalk.vae import CROP_SIZE, LATENT_SIZE, encode_for_unet

logger = logging.getLogger(__name__)

LATENTS_FILE = "latents.pt"
LATENTS_FORMAT = 1
ENCODE_BATCH = 8


def crop_face(frame: np.ndarray, box) -> np.ndarray:
    """The face box as a 256x256 crop; parts of the box outside the frame repeat the border."""
    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = frame.shape[:2]
    pad = max(0, -x1, -y1, x2 - width, y2 - height)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    return cv2.resize(frame[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LANCZOS4)


def add_musetalk_latents(avatar_folder: Path, models: MuseTalkModels, batch_size: int = ENCODE_BATCH) -> Path:
    """Write avatar_folder/latents.pt ((N, 8, 32, 32) float32) for an avatar with face data."""
    avatar = load_avatar(avatar_folder)
    if avatar.face_boxes is None:
        raise AvatarError(
            f"avatar {avatar_folder.name} has no face boxes: prepare it with face detection in genavatar.py first"
        )
    crops = [crop_face(frame, box) for frame, box in zip(avatar.frames, avatar.face_boxes)]
    vae = models.vae
    latents = []
    for start in tqdm(range(0, len(crops), batch_size), desc="musetalk latents", unit="batch"):
        with torch.inference_mode():
            latents.append(encode_for_unet(vae, crops[start:start + batch_size]))
    stacked = torch.cat(latents)
    path = avatar_folder / LATENTS_FILE
    torch.save({"format": LATENTS_FORMAT, "version": models.version, "latents": stacked}, path)
    logger.info("wrote %s: %d frames of MuseTalk latents", path, stacked.shape[0])
    return path


def prepare_avatar(avatar_folder: Path, options) -> Path:
    """genavatar.py --model musetalk: load the weights from options.models_dir, then write latents.pt."""
    try:
        models = load_models(options.models_dir)
    except WeightsError as exc:
        raise AvatarError(str(exc)) from None
    return add_musetalk_latents(avatar_folder, models)


def load_latents(avatar_folder: Path, frame_count: int, faceless: list[int] | tuple[int, ...] = ()) -> torch.Tensor:
    """The (N, 8, 32, 32) latents of an avatar, checked against its frame count.

    Reads this project's file ({"latents": tensor}) and LiveTalking's (a list of
    (1, 8, 32, 32) tensors), always with weights_only=True: the file is untrusted.
    LiveTalking skips frames without a face (`faceless`); those borrow the latents
    of the nearest frame with one, so latents and frames stay aligned.
    """
    path = avatar_folder / LATENTS_FILE
    hint = f"run `python genavatar.py --model musetalk --avatar_id {avatar_folder.name} ...` to prepare it"
    if not path.is_file():
        raise AvatarError(f"avatar {avatar_folder.name} has no MuseTalk latents ({LATENTS_FILE}): {hint}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, (list, tuple)):
            latents = torch.cat([item.reshape(-1, *item.shape[-3:]) for item in data]).float()
        else:
            latents = data["latents"].float()
    except Exception as exc:
        raise AvatarError(f"cannot read {path.name} ({type(exc).__name__}): {hint}") from None
    if latents.ndim != 4 or tuple(latents.shape[1:]) != (8, LATENT_SIZE, LATENT_SIZE):
        raise AvatarError(f"{path.name} holds latents of shape {tuple(latents.shape)} for {frame_count} frames: {hint}")
    if faceless and latents.shape[0] == frame_count - len(faceless):
        skipped = set(faceless)
        with_face = [i for i in range(frame_count) if i not in skipped]
        nearest = [min(range(len(with_face)), key=lambda k: abs(with_face[k] - i)) for i in range(frame_count)]
        latents = latents[nearest]
    if latents.shape[0] != frame_count:
        raise AvatarError(f"{path.name} holds latents of shape {tuple(latents.shape)} for {frame_count} frames: {hint}")
    return latents
