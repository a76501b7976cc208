"""Render a sentence with the lite engine to an mp4 (with sound) and a contact sheet.

    python genavatar.py --default
    python -m tools.render_sentence --text "Hello, I am a talking avatar." --out out/sentence.mp4

The engine runs exactly as in a live session (its render and compose
threads, the same A/V bundles the WebRTC tracks would send); only the wire is
replaced by a file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

from avatars.format import AvatarError

from avatars.store import load_avatar
from basereal import BaseReal, EngineConfig
from media import CHUNK_SAMPLES, SAMPLE_RATE, AudioChunk, AVBundle
from speech.visemes import LabelledAudio, Viseme, downsample_codes

logger = logging.getLogger("render_sentence")

ROOT = Path(__file__).resolve().parents[1]
TAIL_FRAMES = 12  # silence after the sentence, so the mouth is seen to close
BUNDLE_TIMEOUT_S = 5.0
FEED_AHEAD_FRAMES = 4
SHEET_TILES = 24
SHEET_COLUMNS = 6
DEFAULT_RATE_WPM = 165  # EspeakTTS's default


def speech_chunks(audio: np.ndarray | LabelledAudio, epoch: int, tail_frames: int,
                  chunks_per_frame: int) -> list[AudioChunk]:
    """Audio cut into 20 ms speech chunks (padded to whole frames, with their viseme
    codes when the audio is labelled), then silence."""
    samples = audio.samples if isinstance(audio, LabelledAudio) else audio
    frames = -(-len(samples) // (CHUNK_SAMPLES * chunks_per_frame))
    padded = np.zeros(frames * chunks_per_frame * CHUNK_SAMPLES, np.float32)
    padded[: len(samples)] = samples
    pieces = padded.reshape(-1, CHUNK_SAMPLES)
    if isinstance(audio, LabelledAudio):
        codes = np.full(padded.size, Viseme.REST, np.uint8)
        codes[: len(audio.codes)] = audio.codes
        slots = downsample_codes(codes).reshape(len(pieces), -1)
        chunks = [AudioChunk(piece, True, epoch, visemes=slot) for piece, slot in zip(pieces, slots)]
    else:
        chunks = [AudioChunk(piece, speech=True, epoch=epoch) for piece in pieces]
    return chunks + [AudioChunk.silence(epoch) for _ in range(tail_frames * chunks_per_frame)]


def run_engine(engine: BaseReal, audio: np.ndarray | LabelledAudio, tail_frames: int = TAIL_FRAMES) -> list[AVBundle]:
    """Feed `audio` (16 kHz float32, labelled or not) to a not yet started engine; return one bundle per video frame.

    The input queue is filled before the threads start, so the first bundle
    is the first speech frame and bundle k shows avatar step k.
    """
    chunks = speech_chunks(audio, engine.epoch, tail_frames, engine.chunks_per_frame)
    preload = min(len(chunks), engine.audio_in.maxsize)
    for chunk in chunks[:preload]:
        engine.audio_in.put_nowait(chunk)
    feeder = threading.Thread(target=lambda: [engine.put_audio(c) for c in chunks[preload:]],
                              name="render-feeder", daemon=True)
    engine.start()
    feeder.start()
    bundles = []
    try:
        for _ in range(len(chunks) // engine.chunks_per_frame):
            # Take a frame only while the feeder is ahead: on a loaded machine the render
            # thread would otherwise find the input empty and play silence mid-sentence.
            deadline = time.monotonic() + BUNDLE_TIMEOUT_S
            while (feeder.is_alive() and engine.audio_in.qsize() < FEED_AHEAD_FRAMES * engine.chunks_per_frame
                   and time.monotonic() < deadline):
                time.sleep(0.002)
            bundles.append(engine.output.get(timeout=BUNDLE_TIMEOUT_S))
    finally:
        engine.stop()
        feeder.join(1.0)
    return bundles


def write_mp4(path: Path, bundles: list[AVBundle], fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        first = bundles[0].video
        video.width, video.height, video.pix_fmt = first.width, first.height, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        pts = 0
        for index, bundle in enumerate(bundles):
            frame = bundle.video
            frame.pts = index
            container.mux(video.encode(frame))
            samples = bundle.audio.reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="s16", layout="mono")
            sound.sample_rate, sound.pts = SAMPLE_RATE, pts
            pts += samples.shape[1]
            container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def contact_sheet(bundles: list[AVBundle], face_box: np.ndarray, fps: int, tiles: int = SHEET_TILES) -> np.ndarray:
    """Close-ups of evenly spaced frames, each with its time and audio level."""
    x1, y1, x2, y2 = (int(v) for v in face_box)
    pad = (x2 - x1) // 4
    picks = np.linspace(0, len(bundles) - 1, min(tiles, len(bundles))).round().astype(int)
    cells = []
    for index in picks:
        image = bundles[index].video.to_ndarray(format="bgr24")
        height, width = image.shape[:2]
        crop = image[max(y1 - pad, 0) : min(y2 + pad, height), max(x1 - pad, 0) : min(x2 + pad, width)]
        cell = cv2.resize(crop, (240, int(240 * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_CUBIC)
        level = float(np.sqrt(np.mean((bundles[index].audio / 32768.0) ** 2)))
        bar = int(min(1.0, level * 8) * (cell.shape[1] - 10))
        cv2.rectangle(cell, (5, cell.shape[0] - 8), (5 + bar, cell.shape[0] - 3), (60, 200, 60), -1)
        cv2.putText(cell, f"{index / fps:.2f}s", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        cells.append(cell)
    while len(cells) % SHEET_COLUMNS:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i : i + SHEET_COLUMNS]) for i in range(0, len(cells), SHEET_COLUMNS)]
    return np.vstack(rows)


def synthesize_labelled(text: str, voice: str, rate_wpm: int = DEFAULT_RATE_WPM) -> LabelledAudio:
    """espeak's audio for `text` with its per-sample viseme codes."""
    from tts.espeak import EspeakLibrary, EspeakTTS

    pieces = list(EspeakTTS(EspeakLibrary.shared(), voice, rate_wpm).stream_labelled(text, lambda: False))
    return LabelledAudio(np.concatenate([p.samples for p in pieces]), np.concatenate([p.codes for p in pieces]))


def synthesize(text: str, voice: str) -> np.ndarray:
    return synthesize_labelled(text, voice).samples


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default="Hello! I am a talking avatar. I can read any sentence you type, "
                                           "and my lips move with the sound.")
    parser.add_argument("--avatar-id", "--avatar_id", dest="avatar_id", default="default")
    parser.add_argument("--voice", default="en-us")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "sentence.mp4")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG (default: next to --out)")
    parser.add_argument("--audio-only", action="store_true",
                        help="drive the mouth from the audio alone, as for uploads and other TTS (no phoneme labels)")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    args = parser.parse_args(argv)
    try:
        avatar = load_avatar(args.data_dir / "avatars" / args.avatar_id)
    except AvatarError as exc:
        logger.error("%s", exc)
        return 2
    if not avatar.has_face_data:
        logger.error("avatar %s has no face data: rebuild it with genavatar.py", args.avatar_id)
        return 2
    from litereal import LiteReal

    fps = int(avatar.metadata.get("fps", 25))
    labelled = synthesize_labelled(args.text, args.voice)
    audio = labelled.samples
    bundles = run_engine(LiteReal(avatar, EngineConfig(fps=fps), "render"), audio if args.audio_only else labelled)
    write_mp4(args.out, bundles, fps)
    sheet_path = args.sheet or args.out.with_suffix(".png")
    cv2.imwrite(str(sheet_path), contact_sheet(bundles, avatar.face_boxes[0], fps))
    print(f"{len(bundles)} frames ({len(audio) / SAMPLE_RATE:.1f} s of speech) -> {args.out} and {sheet_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
