"""Issue #13's mouth measures, with dlib on frames the lite engine renders.

    python -m bench.bench_visemes                      # espeak phonemes, the bundled astronaut
    python -m bench.bench_visemes --audio-only         # the audio-only network instead
    python -m bench.bench_visemes --avatar data/avatars/me
    python -m bench.bench_visemes --tts piper          # Piper's speech, labelled by the model's durations

Rounding (mouth width on "who, moon, blue" over "see, keep, tea"), the inner-lip gap at each
closure of "mama mama mama mama" and the smallest of "lala lala lala lala" (over the largest),
and the correlation of the inner-lip gap with the frame's loudness on a longer sentence.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np


from avatars.store import load_avatar
from basereal import EngineConfig
from avatars.facegeom import FaceLandmarker
from avatars.prepare import PrepareOptions, build_avatar, default_photo
from litereal import LiteReal
from media import CHUNK_SAMPLES
from speech.visemes import LabelledAudio
from tools.render_sentence import run_engine, synthesize_labelled

SENTENCE = "The quick brown fox jumps over the lazy dog. Please call me back tomorrow morning."
LOUD_RMS = 0.02


PIPER = None  # the bench's Piper voice, loaded on first use


def piper_labelled(text: str) -> LabelledAudio:
    """Piper's audio for `text` with the viseme codes of its phoneme durations (one shared model)."""
    from tts.espeak import EspeakLibrary
    from tts.piper import PiperTTS, PiperVoices, find_voice

    global PIPER
    if PIPER is None:
        PIPER = PiperTTS(find_voice(None, Path("models"), allow_paths=False), PiperVoices(), EspeakLibrary.shared())
    pieces = list(PIPER.stream_labelled(text, lambda: False))
    return LabelledAudio(np.concatenate([p.samples for p in pieces]), np.concatenate([p.codes for p in pieces]))


def measure(avatar, landmarker: FaceLandmarker, text: str, audio_only: bool, tts: str = "espeak"):
    """Per frame (mouth width / face width, inner gap px), RMS, and how many frames hold speech."""
    audio = piper_labelled(text) if tts == "piper" else synthesize_labelled(text, "en-us")
    bundles = run_engine(LiteReal(avatar, EngineConfig(), "bench"), audio.samples if audio_only else audio)
    voiced = len(audio.samples) // (2 * CHUNK_SAMPLES)
    box = landmarker.detect(avatar.frames[0])
    marks = []
    for bundle in bundles[: voiced + 2]:
        p = landmarker.landmarks(bundle.video.to_ndarray(format="bgr24"), box)
        marks.append((np.linalg.norm(p[54] - p[48]) / np.ptp(p[0:17, 0]),
                      float(np.mean(p[[65, 66, 67], 1] - p[[63, 62, 61], 1]))))
    rms = np.array([np.sqrt(np.mean((b.audio / 32768.0) ** 2)) for b in bundles[: voiced + 2]])
    return np.array(marks), rms, voiced


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", type=Path, default=None, help="an avatar folder (default: the astronaut)")
    parser.add_argument("--audio-only", action="store_true", help="no phoneme labels: the audio-only network")
    parser.add_argument("--tts", default="espeak", choices=["espeak", "piper"], help="whose speech")
    args = parser.parse_args()
    landmarker = FaceLandmarker()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.avatar
        if folder is None:
            folder = Path(tmp) / "astronaut"
            build_avatar(folder, PrepareOptions(loop_seconds=2.0), image=default_photo(), source="bench",
                         landmarker=landmarker)
        avatar = load_avatar(folder)
        width = {}
        for text in ("who, moon, blue", "see, keep, tea"):
            marks, rms, voiced = measure(avatar, landmarker, text, args.audio_only, args.tts)
            width[text] = marks[:voiced][rms[:voiced] > LOUD_RMS, 0].mean()
        print(f"rounding: width ratio {width['who, moon, blue'] / width['see, keep, tea']:.3f}")
        marks, _, voiced = measure(avatar, landmarker, "mama mama mama mama", args.audio_only, args.tts)
        gap = marks[:, 1] / marks[:, 1].max()
        minima = [round(float(gap[k]), 2) for k in range(1, voiced) if gap[k] <= min(gap[k - 1], gap[k + 1])]
        print(f"mama: inner gap at each closure / max {minima}")
        marks, _, voiced = measure(avatar, landmarker, "lala lala lala lala", args.audio_only, args.tts)
        print(f"lala: smallest inner gap / max {marks[1:voiced, 1].min() / marks[:, 1].max():.2f}")
        marks, rms, voiced = measure(avatar, landmarker, SENTENCE, args.audio_only, args.tts)
        print(f"loudness correlation (inner gap vs RMS, lag 0): {np.corrcoef(marks[:voiced, 1], rms[:voiced])[0, 1]:.3f}")


if __name__ == "__main__":
    main()
