"""The avatar store: avatars by id from one root folder (genavatar's format or LiveTalking's), cached per process."""

from __future__ import annotations

import logging
from pathlib import Path

from avatars.format import AVATAR_ID_PATTERN, METADATA_FILE, Avatar, AvatarError, check_avatar_id, read_avatar_folder
from avatars.livetalking import COORDS_FILE, livetalking_kind, load_livetalking, with_landmarks
from sync.once import OnceCache

logger = logging.getLogger(__name__)

MAX_CACHED = 8
DEFAULT_CACHE_BYTES = 1024 * 2**20  # avatars kept loaded (frames, masks, rigs): the least recently used go first


def is_avatar_folder(folder: Path) -> bool:
    """A folder genavatar.py wrote, or one in LiveTalking's layout (their index file not a symlink)."""
    meta = folder / METADATA_FILE
    if meta.is_file():
        return not meta.is_symlink()
    return livetalking_kind(folder) is not None and not (folder / COORDS_FILE).is_symlink()


def load_avatar(folder: Path) -> Avatar:
    """Read an avatar folder written by genavatar.py or LiveTalking (blocking: call off the event loop)."""
    if not (folder / METADATA_FILE).is_file() and livetalking_kind(folder) is not None:
        return load_livetalking(folder)
    return read_avatar_folder(folder)


class AvatarStore:
    """Loads avatars by id from one root folder and caches them for the process.

    Thread-safe: concurrent sessions asking for the same id share one load.
    """

    def __init__(self, root: Path, max_cached: int = MAX_CACHED, max_bytes: int | None = DEFAULT_CACHE_BYTES):
        self.root = root
        self._cache: OnceCache[tuple[str, bool], Avatar] = OnceCache(max_cached, "avatar cache", max_bytes,
                                                                    size_of=lambda avatar: avatar.nbytes)

    def cached_bytes(self) -> int:
        return self._cache.nbytes()

    def folder(self, avatar_id: str) -> Path | None:
        """The avatar's folder if it is a real folder inside the root (a symlink, or anything that
        resolves outside data/, is refused: the data folder is all a client may reach)."""
        check_avatar_id(avatar_id)
        folder = self.root / avatar_id
        if folder.is_symlink() or not folder.is_dir():
            return None
        if not folder.resolve().is_relative_to(self.root.resolve()):
            return None
        return folder if is_avatar_folder(folder) else None

    def exists(self, avatar_id: str) -> bool:
        return self.folder(avatar_id) is not None

    def available(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if AVATAR_ID_PATTERN.fullmatch(p.name) and self.folder(p.name) is not None)

    def forget(self, avatar_id: str) -> None:
        """Drop a cached avatar whose folder was rebuilt; sessions using it keep their copy."""
        self._cache.forget(lambda key: key[0] == avatar_id)

    def get(self, avatar_id: str, landmarks: bool = False) -> Avatar:
        """The avatar, loaded once. `landmarks`: an engine needs 68 landmarks per frame, which a
        LiveTalking folder lacks; they are then computed once (slow, cached on disk)."""
        check_avatar_id(avatar_id)
        return self._cache.get((avatar_id, landmarks), lambda: self._load(avatar_id, landmarks))

    def _load(self, avatar_id: str, landmarks: bool) -> Avatar:
        folder = self.folder(avatar_id)
        if folder is None:
            known = ", ".join(self.available()) or "none"
            raise AvatarError(f"unknown avatar {avatar_id!r} (available: {known})")
        avatar = load_avatar(folder)
        if landmarks and avatar.landmarks is None and str(avatar.metadata.get("format", "")).startswith("livetalking"):
            avatar = with_landmarks(avatar)
        return avatar
