"""Lite engine benchmarks (CPU only, each run bounded to a few seconds).

    python -m bench.bench_lite            # all; results go to bench/RESULTS-lite.md by hand

1. genavatar: frames/s for a video (face detection + landmarks + masks + PNG writes)
2. lite compose: ms per spoken frame at the default avatar size (512x512) and at 720p,
   and with real mouths on a video avatar (a talking clip generated from the astronaut)
3. lite shaper: ms per frame from chunks to a mouth shape (phoneme labels; audio-only network)
4. one speaking session: CPU % of one core for engine + VP8 encode at 25 fps
5. capacity: how many speaking sessions (engine + VP8 encode, paced at 25 fps) hold 25 fps
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


from aiortc.codecs.vpx import Vp8Encoder

from avatars.store import load_avatar
from basereal import EngineConfig, to_video_frame
from avatars.prepare import PrepareOptions, build_avatar, default_photo
from basereal import FrameWork
from litereal import LiteReal, avatar_rigs
from lite.lipshape import MouthShaper
from media import AudioChunk
from tools.render_sentence import TAIL_FRAMES, run_engine, speech_chunks, synthesize_labelled
from lite.visemeaudio import MODEL_PATH, AudioVisemes, VisemeNetwork
from speech.visemes import LabelledAudio, MouthShape

FPS = 25


def photo_720p() -> np.ndarray:
    photo = cv2.resize(default_photo(), (720, 720), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((720, 1280, 3), 200, np.uint8)
    canvas[:, 280:1000] = photo
    return canvas


def bench_genavatar(root: Path, frames: int = 25) -> float:
    photo = default_photo()
    clip = [cv2.warpAffine(photo, np.float32([[1, 0, i], [0, 1, 0]]), (512, 512)) for i in range(frames)]
    started = time.perf_counter()
    build_avatar(root / "video", PrepareOptions(), frames=clip, source="bench")
    return frames / (time.perf_counter() - started)


def bench_compose(avatar, frames: int = 150) -> tuple[float, float]:
    """Median (ms per frame for the mouth render + paste, ms for the BGR->I420 conversion).

    Medians, because the machine is shared and single frames get preempted."""
    rigs = avatar_rigs(avatar)
    rng = np.random.default_rng(0)
    shapes = [MouthShape(float(j), float(l), float(w), float(p), float(b)) for j, l, w, p, b in
              zip(rng.uniform(0.1, 0.9, frames), rng.uniform(0.1, 0.8, frames), rng.uniform(-1, 1, frames),
                  rng.choice([0.0, 0.0, 0.5, 1.0], frames), rng.choice([0.0, 0.0, 0.0, 0.5], frames))]
    render, convert = [], []
    for i, shape in enumerate(shapes):
        started = time.perf_counter()
        image = rigs[i % len(rigs)].render(shape)
        middle = time.perf_counter()
        to_video_frame(image)
        render.append(middle - started)
        convert.append(time.perf_counter() - middle)
    return float(np.median(render)) * 1000, float(np.median(convert)) * 1000


def bench_video_compose(photo, speech: LabelledAudio, root: Path, frames: int = 150) -> float:
    """Median ms per spoken frame on a video avatar with real mouths (retrieval + paste)."""
    film = run_engine(LiteReal(photo, EngineConfig(fps=FPS), "film"), speech)
    build_avatar(root / "spoken", PrepareOptions(), frames=[b.video.to_ndarray(format="bgr24") for b in film],
                 source="astronaut spoken by the lite warp")
    engine = LiteReal(load_avatar(root / "spoken"), EngineConfig(fps=FPS), "video")
    rng = np.random.default_rng(1)
    times = []
    for i in range(frames):
        shape = MouthShape(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.5)), float(rng.uniform(-1, 1)),
                           float(rng.choice([0.0, 0.0, 1.0])))
        started = time.perf_counter()
        engine.compose(FrameWork(i % engine.avatar.frame_count, [], 0), shape)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def bench_shaper(speech: LabelledAudio) -> tuple[float, float]:
    """Median ms per frame of MouthShaper: with espeak's labels, and audio-only (the network)."""
    results = []
    for audio in (speech, speech.samples):
        chunks = speech_chunks(audio, 0, TAIL_FRAMES, 2)
        frames = [chunks[i : i + 2] for i in range(0, len(chunks), 2)]
        shaper = MouthShaper(AudioVisemes(VisemeNetwork(MODEL_PATH)), FPS)
        times = []
        for k in range(len(frames) - 1):
            started = time.perf_counter()
            shaper.shape(frames[k], frames[k + 1])
            times.append(time.perf_counter() - started)
        results.append(float(np.median(times)) * 1000)
    return results[0], results[1]


class PacedSession:
    """One speaking session: LiteReal fed with speech, drained at 25 fps into a VP8 encoder."""

    def __init__(self, avatar, speech: LabelledAudio, name: str):
        self.engine = LiteReal(avatar, EngineConfig(fps=FPS), name)
        self.chunks = [c for c in speech_chunks(speech, 0, 0, 2)]
        self.encoder = Vp8Encoder()
        self.frames = 0
        self.late = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._feed, name=f"feed-{name}", daemon=True),
                         threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)]

    def start(self) -> None:
        self.engine.start()
        for thread in self._threads:
            thread.start()

    def _feed(self) -> None:
        while not self._stop.is_set():
            for chunk in self.chunks:
                if self._stop.is_set() or not self.engine.put_audio(
                        AudioChunk(chunk.samples, True, self.engine.epoch, visemes=chunk.visemes)):
                    return

    def _drain(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            due = start + self.frames / FPS
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                bundle = self.engine.output.get(timeout=0.5)
            except Exception:
                continue
            if time.perf_counter() - due > 0.1:
                self.late += 1
            self.encoder.encode(bundle.video)
            self.frames += 1

    def stop(self) -> None:
        self._stop.set()
        self.engine.stop()
        for thread in self._threads:
            thread.join(1.0)


def bench_sessions(avatar, speech: LabelledAudio, count: int, seconds: float) -> tuple[float, float, float]:
    """(worst session fps, share of late frames, CPU % of one core per session)."""
    sessions = [PacedSession(avatar, speech, f"s{i}") for i in range(count)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for session in sessions:
        session.start()
    time.sleep(seconds)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    for session in sessions:
        session.stop()
    worst = min(s.frames for s in sessions) / wall
    late = sum(s.late for s in sessions) / max(1, sum(s.frames for s in sessions))
    return worst, late, 100 * cpu / wall / count


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each session run")
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 4, 8, 10])
    args = parser.parse_args()
    speech = synthesize_labelled("The quick brown fox jumps over the lazy dog. Please call me back tomorrow.", "en-us")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"genavatar (video, 512x512): {bench_genavatar(root):.1f} frames/s")
        started = time.perf_counter()
        build_avatar(root / "default", PrepareOptions(), image=default_photo(), source="bench")
        print(f"genavatar (photo -> 4 s idle loop, 512x512): {time.perf_counter() - started:.1f} s")
        build_avatar(root / "hd", PrepareOptions(loop_seconds=1.0), image=photo_720p(), source="bench")
        default, hd = load_avatar(root / "default"), load_avatar(root / "hd")
        for label, avatar in (("512x512", default), ("1280x720", hd)):
            started = time.perf_counter()
            avatar_rigs(avatar)
            rig_s = time.perf_counter() - started
            render_ms, convert_ms = bench_compose(avatar)
            print(f"lite compose {label}: {render_ms:.2f} ms/frame (+ {convert_ms:.2f} ms BGR->I420); "
                  f"rigging {avatar.frame_count} frames {rig_s:.2f} s")
        print(f"lite compose, video avatar with real mouths 512x512: {bench_video_compose(default, speech, root):.2f} "
              "ms/frame")
        labelled_ms, audio_ms = bench_shaper(speech)
        print(f"lite shaper: {labelled_ms:.3f} ms/frame with phoneme labels, {audio_ms:.3f} ms/frame audio-only (network)")
        for count in args.sessions:
            worst, late, cpu = bench_sessions(default, speech, count, args.seconds)
            print(f"{count:2d} speaking sessions 512x512 (engine + VP8): worst {worst:.1f} fps, "
                  f"{late * 100:.1f}% frames >100 ms late, {cpu:.0f}% of one core per session")


if __name__ == "__main__":
    main()
