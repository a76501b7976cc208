"""Generated custom-action clips (a frames folder + a tone WAV) and frame colour checks."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np

BLUE = (200, 60, 30)  # BGR
GREEN = (40, 200, 40)
RED = (40, 40, 210)
TONE_HZ = 440.0


def write_frames(folder: Path, count: int, color: tuple[int, int, int], size: tuple[int, int] = (160, 160),
                 flash_from: int | None = None) -> Path:
    """`count` solid frames named 0.png.. (white from `flash_from` on, when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        fill = (255, 255, 255) if flash_from is not None and index >= flash_from else color
        frame = np.full((height, width, 3), fill, np.uint8)
        cv2.imwrite(str(folder / f"{index}.png"), frame)
    return folder


def write_tone(path: Path, seconds: float, rate: int = 22050, silent_until: float = 0.0,
               amplitude: float = 0.5) -> Path:
    """A 16-bit mono WAV: silence until `silent_until`, then a 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = amplitude * np.sin(2 * np.pi * TONE_HZ * t)
    samples[t < silent_until] = 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def make_action_set(data_dir: Path, name: str = "actions") -> Path:
    """An idle clip (blue, audiotype 1), a 1 s green clip with a tone (2), a 6 s red clip (3).

    Returns the config file; its paths are written the LiveTalking way (`data/...`)."""
    root = data_dir / "customvideo" / name
    write_frames(root / "idle", 8, BLUE)
    write_frames(root / "wave", 25, GREEN, size=(120, 90))  # another size: scaled to the session's
    write_tone(root / "wave.wav", 1.0)
    write_frames(root / "long", 10, RED)
    write_tone(root / "long.wav", 6.0)
    rel = f"data/customvideo/{name}"
    config = [
        {"audiotype": 1, "imgpath": f"{rel}/idle"},
        {"audiotype": 2, "imgpath": f"{rel}/wave", "audiopath": f"{rel}/wave.wav"},
        {"audiotype": 3, "imgpath": f"{rel}/long", "audiopath": f"{rel}/long.wav"},
    ]
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


def center_color(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return frame[h // 2 - 15:h // 2 + 15, w // 2 - 15:w // 2 + 15].reshape(-1, 3).mean(0)


def near(frame: np.ndarray, color: tuple[int, int, int], tolerance: float = 30.0) -> bool:
    return float(np.abs(center_color(frame) - np.array(color, np.float32)).max()) < tolerance
