"""LiteReal: the CPU lip-sync engine (no downloaded weights).

Per video frame, `MouthShaper` turns the frame's audio (plus one queued chunk
of lookahead) into a mouth shape, and the avatar frame's `MouthRig` warps the
lower face into that shape. Rigs are built once per avatar (shared by every
session, cached on the avatar) when the first session starts; per frame the
work is a weighted sum of three small fields, one remap of the mouth box, a
painted mouth cavity and a masked paste-back. A closed mouth is the idle frame
itself, untouched.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from avatar import Avatar
from basereal import BaseReal, EngineConfig, FrameWork
from lipshape import MouthShape, MouthShaper
from mouthwarp import MouthRig

logger = logging.getLogger(__name__)

RIGS_KEY = "lite.rigs"
RIGS_LOCK_KEY = "lite.rigs.lock"
LOOKAHEAD_CHUNKS = 1


def avatar_rigs(avatar: Avatar) -> tuple[MouthRig, ...] | None:
    """The avatar's per-frame rigs, built on first use and cached on the avatar."""
    if not avatar.has_face_data:
        return None
    rigs = avatar.extras.get(RIGS_KEY)
    if rigs is not None:
        return rigs
    with avatar.extras.setdefault(RIGS_LOCK_KEY, threading.Lock()):  # concurrent sessions build once
        rigs = avatar.extras.get(RIGS_KEY)
        if rigs is None:
            rigs = tuple(MouthRig(avatar.frames[i], avatar.landmarks[i], avatar.crop_boxes[i], avatar.masks[i])
                         for i in range(avatar.frame_count))
            avatar.extras[RIGS_KEY] = rigs
            logger.info("lite: rigged avatar %s (%d frames)", avatar.avatar_id, len(rigs))
    return rigs


class LiteReal(BaseReal):
    """Audio-driven lower-face warp on the avatar's own frames."""

    name = "lite"

    def __init__(self, avatar: Avatar, config: EngineConfig, session_id: str = ""):
        super().__init__(avatar, config, session_id)
        self.rigs = avatar_rigs(avatar)
        if self.rigs is None:
            logger.warning("avatar %s has no face data: the lite engine streams it without lip movement; "
                           "rebuild it with `python genavatar.py --image/--video ... --avatar_id %s`",
                           avatar.avatar_id, avatar.avatar_id)
        self.shaper = MouthShaper()

    def render_frames(self, work: list[FrameWork]) -> list[MouthShape | None]:
        results: list[MouthShape | None] = []
        for index, item in enumerate(work):
            if avatar_rigs(item.avatar or self.avatar) is None:
                results.append(None)
                continue
            current = np.concatenate([chunk.samples for chunk in item.chunks])
            if index + 1 < len(work):
                ahead = work[index + 1].chunks[:LOOKAHEAD_CHUNKS]
            else:
                ahead = self.peek_audio(LOOKAHEAD_CHUNKS)
            ahead_samples = np.concatenate([c.samples for c in ahead if c.epoch == item.epoch] or [np.zeros(0, np.float32)])
            shape = self.shaper.shape(current, ahead_samples, item.speech)
            results.append(None if shape.closed else shape)
        return results

    def prepare_avatar(self, avatar: Avatar) -> None:
        avatar_rigs(avatar)

    def can_lipsync(self, avatar: Avatar) -> bool:
        return avatar_rigs(avatar) is not None

    def use_avatar(self, avatar: Avatar) -> None:
        super().use_avatar(avatar)
        self.rigs = avatar_rigs(avatar)

    def compose(self, work: FrameWork, result: MouthShape | None) -> np.ndarray:
        avatar = work.avatar or self.avatar
        rigs = avatar_rigs(avatar) if result is not None else None
        if rigs is None:
            return avatar.frames[work.index]
        return rigs[work.index].render(result)

    def interrupt(self) -> int:
        epoch = super().interrupt()
        self.shaper.reset()
        return epoch
