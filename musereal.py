"""MuseReal: a session engine that lip-syncs the avatar with MuseTalk.

The heavy state is process-wide and lives in `MuseTalkRuntime` (built once by
EngineFactory): the models, the single inference worker that batches all
sessions, and per-avatar assets (latents, paste-back plans) shared read-only.
A MuseReal only keeps its session's audio context and asks the worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatars.format import Avatar, AvatarError
from basereal import BaseReal, EngineConfig, FrameWork
from blending import BlendPlan, paste_back
from museasr import MuseASR
from musetalk.features import edge_mode_for
from musetalk.accel import accelerate
from musetalk.loader import MuseTalkModels, load_models
from musetalk.prepare import load_latents
from musetalk.settings import MuseTalkSettings
from musetalk.worker import InferenceWorker, LipSyncRequest

logger = logging.getLogger(__name__)

MAX_CACHED_AVATARS = 8


@dataclass(frozen=True)
class MuseAvatarAssets:
    """What MuseTalk needs per avatar frame: UNet input latents and the paste-back plan."""

    latents: torch.Tensor  # (N, 8, 32, 32) float32, CPU
    plans: tuple[BlendPlan, ...]

    @staticmethod
    def build(avatar: Avatar) -> "MuseAvatarAssets":
        if avatar.metadata.get("format") == "livetalking-wav2lip":
            raise AvatarError(
                f"avatar {avatar.avatar_id} is a LiveTalking wav2lip folder (no MuseTalk masks or latents): convert "
                f"it with `python genavatar.py --model musetalk --video {avatar.folder / 'full_imgs'} "
                f"--avatar_id {avatar.avatar_id}_musetalk`, or serve it with --model lite"
            )
        if avatar.face_boxes is None or avatar.crop_boxes is None or avatar.masks is None:
            raise AvatarError(
                f"avatar {avatar.avatar_id} has no face data (landmarks, boxes, masks): rebuild it with "
                f"`python genavatar.py --model musetalk --avatar_id {avatar.avatar_id} ...`"
            )
        latents = load_latents(avatar.folder, avatar.frame_count, avatar.metadata.get("faceless_frames", ()))
        plans = tuple(BlendPlan.build(frame.shape, face, crop, mask) for frame, face, crop, mask
                      in zip(avatar.frames, avatar.face_boxes, avatar.crop_boxes, avatar.masks))
        return MuseAvatarAssets(latents=latents, plans=plans)


class MuseTalkRuntime:
    """Process-wide MuseTalk state: models, the inference worker, avatar assets."""

    def __init__(self, models: MuseTalkModels, settings: MuseTalkSettings):
        self.models = accelerate(models, settings.channels_last, settings.compile)
        self.settings = settings
        self.worker = InferenceWorker(self.models, settings.max_batch, pad_to_bucket=settings.compile != "off")
        self._assets: dict[str, tuple[Avatar, MuseAvatarAssets]] = {}
        self._lock = threading.Lock()
        self.worker.start()

    @staticmethod
    def load(models_dir: Path, settings: MuseTalkSettings) -> "MuseTalkRuntime":
        """Load the weights (raises musetalk.loader.WeightsError) and start the worker."""
        return MuseTalkRuntime(load_models(models_dir, settings.version, settings.device), settings)

    def assets_for(self, avatar: Avatar) -> MuseAvatarAssets:
        with self._lock:
            cached = self._assets.get(avatar.avatar_id)
            if cached is not None and cached[0] is avatar:
                return cached[1]
        assets = MuseAvatarAssets.build(avatar)
        prepared_for = avatar.metadata.get("musetalk_version")
        if prepared_for and prepared_for != self.models.version:
            logger.warning("avatar %s has MuseTalk %s geometry but %s weights are loaded: rebuild it with "
                           "`python genavatar.py --musetalk_version %s ...`", avatar.avatar_id, prepared_for,
                           self.models.version, self.models.version)
        with self._lock:
            if len(self._assets) >= MAX_CACHED_AVATARS and avatar.avatar_id not in self._assets:
                del self._assets[next(iter(self._assets))]
            self._assets[avatar.avatar_id] = (avatar, assets)
        return assets

    def close(self) -> None:
        self.worker.stop()


class MuseReal(BaseReal):
    """One session: batches its speech frames through the shared worker and pastes faces back."""

    name = "musetalk"

    def __init__(self, avatar: Avatar, config: EngineConfig, session_id: str = "", *, runtime: MuseTalkRuntime):
        # A batch must be computed while the previous one plays: keep a batch of frames ahead of the wire.
        config = replace(config, lookahead_frames=max(config.lookahead_frames, config.batch_size))
        super().__init__(avatar, config, session_id)
        self.runtime = runtime
        self.assets = runtime.assets_for(avatar)
        self.worker = runtime.worker
        self.settings = runtime.settings
        self.asr = MuseASR(config.fps, runtime.settings.right_chunks, edge_mode_for(runtime.models.version),
                           max_batch=max(1, config.batch_size))
        self._next_batch = self._first_batch()

    def _first_batch(self) -> int:
        return max(1, min(self.settings.first_batch, self.config.batch_size))

    def frames_per_step(self, speech_pending: bool) -> int:
        """1 while idle; after silence a small batch, doubling up to batch_size.

        A small first batch puts the first voiced frame on the wire sooner, and
        each batch takes about as long to compute as the one before it plays.
        """
        return self._next_batch if speech_pending else 1

    def interrupt(self) -> int:
        """Requests in flight go stale (the worker drops them); the next speech starts small again."""
        self._next_batch = self._first_batch()
        return super().interrupt()

    def render_frames(self, work: list[FrameWork]) -> list[Any]:
        chunks = [chunk for item in work for chunk in item.chunks]
        if not any(item.speech for item in work):
            self._next_batch = self._first_batch()
            self.asr.push(chunks)
            return [None] * len(work)
        self._next_batch = min(2 * self._next_batch, max(1, self.config.batch_size))
        epoch = work[0].epoch
        request = LipSyncRequest(
            owner=self.session_id,
            audio=self.asr.window(chunks, self.peek_audio(self.asr.right)),
            latents=torch.stack([self.runtime.assets_for(item.avatar or self.avatar).latents[item.index]
                                 for item in work]),
            is_current=lambda: self.epoch == epoch and not self.stopped,
        )
        try:
            faces = self.worker.infer(request, self._stopping)
        except Exception:
            logger.exception("session %s: musetalk batch failed, showing idle frames", self.session_id[:8])
            return [None] * len(work)
        if faces is None:
            return [None] * len(work)
        return [face if item.speech else None for item, face in zip(work, faces)]

    def prepare_avatar(self, avatar: Avatar) -> None:
        self.runtime.assets_for(avatar)

    def can_lipsync(self, avatar: Avatar) -> bool:
        try:
            self.runtime.assets_for(avatar)
        except AvatarError as exc:
            logger.info("musetalk cannot lip-sync %s: %s", avatar.avatar_id, exc)
            return False
        return True

    def use_avatar(self, avatar: Avatar) -> None:
        super().use_avatar(avatar)
        self.assets = self.runtime.assets_for(avatar)

    def compose(self, work: FrameWork, result: np.ndarray | None) -> np.ndarray:
        avatar = work.avatar or self.avatar
        frame = avatar.frames[work.index]
        if result is None:
            return frame
        return paste_back(frame, result, self.runtime.assets_for(avatar).plans[work.index])
