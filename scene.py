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

import cv2
import numpy as np

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
    so sessions of the same size share one copy.
    """

    name: str
    frames: tuple[np.ndarray, ...]
    audio: np.ndarray | None = None
    _scaled: dict[tuple[int, int], tuple[np.ndarray, ...]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def frames_at(self, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        with self._lock:
            scaled = self._scaled.get(size)
            if scaled is None:
                scaled = tuple(_read_only(fit_frame(f, size).copy()) for f in self.frames)
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


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def loop_index(step: int, count: int) -> int:
    """Forward then backward over `count` frames, so a loop never jumps."""
    if count <= 1:
        return 0
    period = 2 * count - 2
    position = step % period
    return position if position < count else period - position


@dataclass
class ClipFrame:
    """An action clip's contribution to one frame: its image and its audio."""

    image: np.ndarray
    audio: np.ndarray  # (chunks_per_frame, CHUNK_SAMPLES) float32


class Scene:
    """Per-session source selection and crossfades (render thread + commands from the loop)."""

    def __init__(self, size: tuple[int, int], chunks_per_frame: int, fade_frames: int = DEFAULT_FADE_FRAMES):
        self.size = size
        self.chunks_per_frame = chunks_per_frame
        self.fade_frames = fade_frames
        self.idle: Clip | None = None
        self.actions: dict[int, Clip] = {}
        self._lock = threading.Lock()
        self._requested: Clip | None = None
        self._stop_requested = False
        self._held_for_switch: np.ndarray | None = None
        # render-thread state
        self._playing: Clip | None = None
        self._position = 0
        self._idle_step = 0
        self._source: Clip | None = None  # None: the avatar
        self._last_image: np.ndarray | None = None  # last image shown of a clip source
        self._fade_from: np.ndarray | None = None  # None: fading from the avatar
        self._fade_left = 0
        self._this_frame: ClipFrame | None = None
        self._frame_source: Clip | None = None  # the action clip this frame belongs to

    # ---- commands (any thread) ------------------------------------------
    def configure(self, clips: dict[int, Clip], fade_frames: int) -> None:
        """Set the session's custom actions; audiotype 1 is the idle clip."""
        with self._lock:
            self.idle = clips.get(1)
            self.actions = {k: v for k, v in clips.items() if k != 1}
            self.fade_frames = fade_frames

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
    def clip_audio(self, speech_pending: bool) -> np.ndarray | None:
        """First call per frame: the action clip's audio for this frame, or None.

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
            self._start_fade(held)
        self._this_frame = None
        clip = self._playing
        if clip is None or speech_pending:
            self._playing = None
            return None
        frames = clip.frames_at(self.size)
        self._frame_source = clip
        self._this_frame = ClipFrame(frames[loop_index(self._position, len(frames))],
                                     clip.chunks(self._position, self.chunks_per_frame))
        self._position += 1
        if self._position >= clip.length(self.chunks_per_frame):
            self._playing = None  # this was its last frame
        return self._this_frame.audio

    def layer(self, speech: bool) -> Layer | None:
        """Second call per frame: what to lay over the composed avatar frame."""
        if self._this_frame is not None:
            source, image = self._frame_source, self._this_frame.image
        elif not speech and self.idle is not None:
            frames = self.idle.frames_at(self.size)
            source, image = self.idle, frames[loop_index(self._idle_step, len(frames))]
            self._idle_step += 1
        else:
            source, image = None, None
        if source is not self._source:
            self._start_fade(self._last_image if self._source is not None else None, from_avatar=self._source is None)
            self._source = source
        if image is not None:
            self._last_image = image
        return self._fade(image)

    def _start_fade(self, image: np.ndarray | None, from_avatar: bool = False) -> None:
        if self.fade_frames <= 0 or (image is None and not from_avatar):
            self._fade_left = 0
            return
        self._fade_from = image
        self._fade_left = self.fade_frames

    def _fade(self, image: np.ndarray | None) -> Layer | None:
        if self._fade_left <= 0:
            return Layer(image) if image is not None else None
        t = (self.fade_frames - self._fade_left + 1) / (self.fade_frames + 1)
        self._fade_left -= 1
        start = self._fade_from
        if start is None:  # avatar -> image
            return Layer(image, t) if image is not None else None
        if image is None:  # image -> avatar
            return Layer(start, 1.0 - t)
        return Layer(blend(start, image, t))
