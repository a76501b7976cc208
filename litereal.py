"""LiteReal: the CPU lip-sync engine (no downloaded weights).

Per video frame, `MouthShaper` turns the frame's audio and visemes (plus the
next frame's, as lookahead) into a mouth shape, and the avatar frame's
`MouthRig` warps the lower face into that shape. Visemes come with the audio
when the TTS knows its phonemes (espeak); otherwise a small network trained
here estimates them from the sound (visemeaudio.py).

Rigs are built once per avatar (shared by every session, cached on the avatar)
when the first session starts; per frame the work is a weighted sum of four
small fields, one remap of the mouth box, a painted mouth cavity and a masked
paste-back. A closed mouth is the idle frame itself, untouched.
"""

from __future__ import annotations

import logging

import numpy as np

from avatars.format import Avatar
from basereal import BaseReal, EngineConfig, FrameWork
from lite.lipshape import MouthShaper
from lite.mouthbank import MouthBank, MouthRetriever
from lite.mouthwarp import MouthRig
from lite.visemeaudio import MODEL_PATH, VisemeNetwork, audio_estimator
from speech.visemes import SHAPES, MouthShape, Viseme

logger = logging.getLogger(__name__)

MOUTHS_KEY = "lite.mouths"
RIGS_KEY = "lite.rigs"
LOOKAHEAD_FRAMES = 1
WIDEST, ROUNDEST, MOST_OPEN = SHAPES[Viseme.SPREAD], SHAPES[Viseme.ROUNDED], SHAPES[Viseme.OPEN]


def avatar_rigs(avatar: Avatar) -> tuple[MouthRig, ...] | None:
    """The avatar's per-frame rigs, built on first use and cached on the avatar (sessions build once)."""
    if not avatar.has_face_data:
        return None

    def build() -> tuple[MouthRig, ...]:
        rigs = tuple(MouthRig(avatar.frames[i], avatar.landmarks[i], avatar.crop_boxes[i], avatar.masks[i])
                     for i in range(avatar.frame_count))
        logger.info("lite: rigged avatar %s (%d frames)", avatar.avatar_id, len(rigs))
        return rigs

    return avatar.derived.get(RIGS_KEY, build)


def avatar_mouths(avatar: Avatar) -> MouthBank | None:
    """A video avatar's indexed real mouths (None for photos), read on first use and cached."""
    return avatar.derived.get(MOUTHS_KEY, lambda: MouthBank.load(avatar.folder) if avatar.has_face_data else None)


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
        network = VisemeNetwork(MODEL_PATH) if MODEL_PATH.is_file() else None  # a few kB, read per session
        if network is None:
            logger.warning("%s is missing: audio without phoneme labels is shaped by band-energy rules; "
                           "run `python -m tools.train_visemes` to rebuild it", MODEL_PATH)
        self.shaper = MouthShaper(audio_estimator(network), config.fps)
        avatar_mouths(avatar)  # read here (off the event loop), not on the first spoken frame
        self._retrieval: tuple[Avatar | None, MouthRetriever | None] = (None, None)  # compose thread only

    def render_frames(self, work: list[FrameWork]) -> list[MouthShape | None]:
        results: list[MouthShape | None] = []
        for index, item in enumerate(work):
            if avatar_rigs(item.avatar or self.avatar) is None:
                results.append(None)
                continue
            wanted = LOOKAHEAD_FRAMES * self.chunks_per_frame
            ahead = [c for w in work[index + 1:] for c in w.chunks][:wanted]
            if len(ahead) < wanted:
                ahead += self.peek_audio(wanted - len(ahead))
            shape = self.shaper.shape(item.chunks, [c for c in ahead if c.epoch == item.epoch])
            results.append(None if shape.closed else shape)
        return results

    def prepare_avatar(self, avatar: Avatar) -> None:
        avatar_rigs(avatar)
        avatar_mouths(avatar)

    def can_lipsync(self, avatar: Avatar) -> bool:
        return avatar_rigs(avatar) is not None

    def use_avatar(self, avatar: Avatar) -> None:
        super().use_avatar(avatar)
        self.rigs = avatar_rigs(avatar)

    def compose(self, work: FrameWork, result: MouthShape | None) -> np.ndarray:
        avatar = work.avatar or self.avatar
        rigs = avatar_rigs(avatar) if result is not None else None
        retriever = self._retriever(avatar)
        if rigs is None:
            if retriever is not None:
                retriever.reset()
            return avatar.frames[work.index]
        rig = rigs[work.index]
        mouth = None
        if retriever is not None:
            mouth = retriever.choose(rig.landmarks, rig.moved_landmarks(result), *self._extremes(rig))
        if mouth is None:
            return rig.render(result)
        patch, choice, jaw_px = mouth
        jaw = rig.jaw_shape(jaw_px, result)  # the jaw and chin follow the real lower lip down
        image = rig.render(jaw) if not jaw.closed else avatar.frames[work.index].copy()
        retriever.paste(image, work.index, rig.landmarks, patch, choice)
        rig.face_motion.apply(image, result.brow)  # after the paste: the real mouth nods with the head
        return image

    @property
    def retriever(self) -> MouthRetriever | None:
        """The real-mouth retriever of the avatar composed last (None for photos)."""
        return self._retrieval[1]

    def _retriever(self, avatar: Avatar) -> MouthRetriever | None:
        """This session's real-mouth retriever for `avatar` (None for photos), new on a switch."""
        held, retriever = self._retrieval
        if held is not avatar:
            bank = avatar_mouths(avatar)
            retriever = MouthRetriever(bank) if bank is not None else None
            self._retrieval = (avatar, retriever)
        return retriever

    @staticmethod
    def _extremes(rig: MouthRig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rig's widest, roundest and most open mouths on its frame (its range)."""
        return tuple(rig.moved_landmarks(shape) for shape in (WIDEST, ROUNDEST, MOST_OPEN))

    def interrupt(self) -> int:
        epoch = super().interrupt()
        self.shaper.reset()
        retriever = self._retrieval[1]
        if retriever is not None:
            retriever.reset()
        return epoch
