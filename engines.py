"""Choosing and building the lip-sync engine each session runs.

Heavy shared state (model weights, the GPU worker) is owned by the factory, one
per process, and handed to each session's engine; prepared avatars come from
the shared AvatarStore.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from avatars.store import AvatarStore
from basereal import BaseReal, EngineConfig
from musetalk.settings import MuseTalkSettings

logger = logging.getLogger(__name__)

MODEL_CHOICES = ("auto", "lite", "musetalk")


class EngineUnavailable(Exception):
    """The chosen engine cannot run here; the message says what to do."""


def resolve_model(choice: str, models_dir: Path) -> str:
    """auto -> musetalk when its weights are present, else lite."""
    if choice not in MODEL_CHOICES:
        raise EngineUnavailable(f"unknown model {choice!r}: choose one of {', '.join(MODEL_CHOICES)}")
    if choice != "auto":
        return choice
    if (models_dir / "musetalkV15" / "unet.pth").is_file() or (models_dir / "musetalk" / "pytorch_model.bin").is_file():
        return "musetalk"
    return "lite"


class EngineFactory:
    """Builds one engine per session (blocking: call in an executor)."""

    def __init__(self, model: str, avatars: AvatarStore, config: EngineConfig, models_dir: Path,
                 musetalk: MuseTalkSettings | None = None):
        self.model = model
        self.avatars = avatars
        self.config = config
        self.models_dir = models_dir
        self.musetalk_settings = musetalk or MuseTalkSettings()
        self._engine_kwargs: dict = {}  # process-wide state handed to every engine
        self._musetalk = None  # MuseTalkRuntime: models + the one inference worker
        self._on_batch: Callable[[str, int, float], None] | None = None
        self._engine_class = self._load_engine_class(model)
        self.loaded = True  # until close()

    def observe_batches(self, on_batch: Callable[[str, int, float], None]) -> None:
        """Report (stage, frames, seconds) of each session render step and each shared GPU pass."""
        self._on_batch = on_batch
        if self._musetalk is not None:
            self._musetalk.worker.on_batch = lambda frames, seconds: on_batch("worker", frames, seconds)

    def _load_engine_class(self, model: str) -> type[BaseReal]:
        if model == "lite":
            from litereal import LiteReal

            return LiteReal
        if model == "musetalk":
            from musereal import MuseReal, MuseTalkRuntime
            from musetalk.loader import WeightsError

            try:
                self._musetalk = MuseTalkRuntime.load(self.models_dir, self.musetalk_settings)
            except WeightsError as exc:
                raise EngineUnavailable(str(exc)) from None
            self._engine_kwargs = {"runtime": self._musetalk}
            return MuseReal
        raise EngineUnavailable(
            f"the {model} engine is not available in this build: use --model lite"
        )

    @property
    def needs_landmarks(self) -> bool:
        """The lite engine warps the face along its 68 landmarks."""
        return self.model == "lite"

    def prepare(self, avatar_id: str) -> None:
        """Load (and for imported avatars, landmark) an avatar before the first session asks for it."""
        self.avatars.get(avatar_id, landmarks=self.needs_landmarks)

    def build(self, avatar_id: str, session_id: str) -> BaseReal:
        avatar = self.avatars.get(avatar_id, landmarks=self.needs_landmarks)
        engine = self._engine_class(avatar, self.config, session_id, **self._engine_kwargs)
        if self._on_batch is not None:
            on_batch = self._on_batch
            engine.on_render = lambda frames, seconds: on_batch("session", frames, seconds)
        engine.start()
        return engine

    def close(self) -> None:
        """Release process-wide model state (workers, weights)."""
        self.loaded = False
        if self._musetalk is not None:
            self._musetalk.close()
            self._musetalk = None
