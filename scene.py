"""What each frame of a session shows: the avatar, an idle clip or an action clip, crossfaded.

A `Scene` belongs to one engine and is driven by its render thread, one call
per video frame. It picks the frame's source (an action clip playing, else the
avatar while speaking, else the idle clip when there is one, else the avatar)
and, when the source changes, fades from the last image of the old source to
the new one over `fade_frames` frames. The result is a `Layer` laid over the
engine's composed avatar frame: `None` (the avatar as composed), an opaque clip
image (the engine's frame is not needed), or an image with an alpha in (0, 1)
during a fade. Commands (play, stop, switch avatar) come from the event loop
and are taken by the render thread at its next frame.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from avatars.format import Avatar, read_only
from media import CHUNK_SAMPLES

DEFAULT_FADE_FRAMES = 5


def fit_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled into `size` (width, height), aspect kept, centred on black bars."""
    width, height = size
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if (new_w, new_h) == (width, height):
        return scaled
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - new_w) // 2, (height - new_h) // 2
    out[y:y + new_h, x:x + new_w] = scaled
    return out


def blend(under: np.ndarray, over: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * under + alpha * over, in uint8."""
    return cv2.addWeighted(over, alpha, under, 1.0 - alpha, 0.0)


@dataclass(frozen=True)
class Layer:
    """An image laid over a frame's composed avatar image with `alpha` (1 = it replaces it)."""

    image: np.ndarray
    alpha: float = 1.0

    @property
    def opaque(self) -> bool:
        return self.alpha >= 1.0

    def over(self, composed: np.ndarray) -> np.ndarray:
        return self.image if self.opaque else blend(composed, self.image, self.alpha)


@dataclass
class Clip:
    """A custom action: frames (BGR) and optional 16 kHz mono audio, shared read-only by sessions.

    `frames_at` scales the frames once per output size and caches the result,
    so sessions of the same size share one copy. `avatar` is set when the
    clip's folder is a prepared avatar: engines that can lip-sync it do.
    """

    name: str
    frames: tuple[np.ndarray, ...]
    audio: np.ndarray | None = None
    avatar: Avatar | None = None
    _scaled: dict[tuple[int, int], tuple[np.ndarray, ...]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def frames_at(self, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        with self._lock:
            scaled = self._scaled.get(size)
            if scaled is None:
                scaled = tuple(read_only(fit_frame(f, size).copy()) for f in self.frames)
                self._scaled[size] = scaled
            return scaled

    def length(self, chunks_per_frame: int) -> int:
        """Frames the clip plays for: its audio's length, or its frame count when silent."""
        if self.audio is None:
            return len(self.frames)
        return max(1, math.ceil(self.audio.size / (CHUNK_SAMPLES * chunks_per_frame)))

    def chunks(self, position: int, chunks_per_frame: int) -> np.ndarray:
        """The audio of frame `position`: (chunks_per_frame, CHUNK_SAMPLES) float32, zero-padded."""
        per_frame = CHUNK_SAMPLES * chunks_per_frame
        out = np.zeros(per_frame, np.float32)
        if self.audio is not None:
            piece = self.audio[position * per_frame:(position + 1) * per_frame]
            out[:piece.size] = piece
        return out.reshape(chunks_per_frame, CHUNK_SAMPLES)



def loop_index(step: int, count: int) -> int:
    """Forward then backward over `count` frames, so a loop never jumps."""
    if count <= 1:
        return 0
    period = 2 * count - 2
    position = step % period
    return position if position < count else period - position


@dataclass
class ClipFrame:
    """An action clip's contribution to one frame.

    `lipsync` frames are rendered by the engine on the clip's avatar (frame
    `index`) with the clip's audio; the others show `image` as it is.
    """

    image: np.ndarray  # the clip frame at the session's size
    audio: np.ndarray  # (chunks_per_frame, CHUNK_SAMPLES) float32
    index: int
    avatar: Avatar | None
    lipsync: bool


class Scene:
    """Per-session source selection and crossfades (render thread + commands from the loop)."""

    def __init__(self, size: tuple[int, int], chunks_per_frame: int, fade_frames: int = DEFAULT_FADE_FRAMES):
        self.size = size
        self.chunks_per_frame = chunks_per_frame
        self.fade_frames = fade_frames
        self.idle: Clip | None = None
        self.actions: dict[int, Clip] = {}
        self.lipsynced: frozenset[int] = frozenset()  # ids of the clips this session's engine lip-syncs
        self._lock = threading.Lock()
        self._requested: Clip | None = None
        self._stop_requested = False
        self._held_for_switch: np.ndarray | None = None
        # render-thread state
        self._playing: Clip | None = None
        self._position = 0
        self._idle_step = 0
        self._source: Clip | None = None  # None: the avatar
        self._held: Callable[[], np.ndarray] | None = None  # the current source's last image
        self._fade_from: np.ndarray | None = None
        self._fade_live = False  # fading from the avatar as it is composed, not a frozen image
        self._fade_left = 0
        self._this_frame: ClipFrame | None = None
        self._frame_source: Clip | None = None  # the action clip this frame belongs to

    # ---- commands (any thread) ------------------------------------------
    def configure(self, clips: dict[int, Clip], fade_frames: int, lipsynced: frozenset[int] = frozenset()) -> None:
        """Set the session's custom actions (audiotype 1 is the idle clip) and which it lip-syncs."""
        with self._lock:
            self.idle = clips.get(1)
            self.actions = {k: v for k, v in clips.items() if k != 1}
            self.fade_frames = fade_frames
            self.lipsynced = lipsynced

    def play(self, audiotype: int) -> Clip:
        """Start action `audiotype` at the next frame (KeyError if the session has none)."""
        clip = self.actions[audiotype]
        with self._lock:
            self._requested, self._stop_requested = clip, False
        return clip

    def stop(self) -> None:
        """End the action clip playing (an interrupt); it fades back to the avatar or idle clip."""
        with self._lock:
            self._requested, self._stop_requested = None, True

    def switch_avatar(self, held: np.ndarray) -> None:
        """The avatar changes at the next frame: fade from `held` (the old avatar's frame)."""
        with self._lock:
            self._held_for_switch = held

    @property
    def playing(self) -> bool:
        return self._playing is not None or self._requested is not None

    # ---- render thread -----------------------------------------------------
    def clip_frame(self, speech_pending: bool) -> ClipFrame | None:
        """First call per frame: the action clip's part of this frame, or None.

        Speech waiting in the engine ends the clip: speech takes over at once.
        """
        with self._lock:
            requested, stop, held = self._requested, self._stop_requested, self._held_for_switch
            self._requested, self._stop_requested, self._held_for_switch = None, False, None
        if stop:
            self._playing = None
        if requested is not None:
            self._playing, self._position = requested, 0
        if held is not None and self._source is None:
            self._begin_fade(held, live=False)
        self._this_frame = None
        clip = self._playing
        if clip is None or speech_pending:
            self._playing = None
            return None
        frames = clip.frames_at(self.size)
        index = loop_index(self._position, len(frames))
        self._frame_source = clip
        self._this_frame = ClipFrame(frames[index], clip.chunks(self._position, self.chunks_per_frame), index,
                                     clip.avatar, lipsync=id(clip) in self.lipsynced)
        self._position += 1
        if self._position >= clip.length(self.chunks_per_frame):
            self._playing = None  # this was its last frame
        return self._this_frame

    def layer(self, speech: bool, avatar_image: Callable[[], np.ndarray]) -> Layer | None:
        """Second call per frame: what to lay over the frame the engine composes.

        `avatar_image` gives the session avatar's plain frame (what a fade away
        from the avatar starts from); it is only called when a fade starts.
        """
        frame = self._this_frame
        opaque: np.ndarray | None = None
        held: np.ndarray | None = None
        if frame is not None:
            source, held = self._frame_source, frame.image
            opaque = None if frame.lipsync else frame.image
        elif not speech and self.idle is not None:
            frames = self.idle.frames_at(self.size)
            source = self.idle
            opaque = held = frames[loop_index(self._idle_step, len(frames))]
            self._idle_step += 1
        else:
            source = None
        if source is not self._source:
            if self._held is not None:
                self._begin_fade(self._held(), live=self._source is None and opaque is not None)
            self._source = source
        self._held = (lambda: held) if held is not None else avatar_image
        return self._fade(opaque)

    def _begin_fade(self, image: np.ndarray, live: bool) -> None:
        if self.fade_frames > 0:
            self._fade_from, self._fade_live, self._fade_left = image, live, self.fade_frames

    def _fade(self, opaque: np.ndarray | None) -> Layer | None:
        if self._fade_left <= 0:
            return Layer(opaque) if opaque is not None else None
        t = (self.fade_frames - self._fade_left + 1) / (self.fade_frames + 1)
        self._fade_left -= 1
        if opaque is None:  # to what the engine composes
            return Layer(self._fade_from, 1.0 - t)
        if self._fade_live:  # from the avatar, still composed under the incoming image
            return Layer(opaque, t)
        return Layer(blend(self._fade_from, opaque, t))
