"""Piper against espeak, in this process: time to a sentence's first audio, real-time factor,
and how well faster-whisper tiny.en understands each voice.

    python -m bench.bench_piper [--repeats 3] [--voice en_US-joe-medium]

For each of the SENTENCES (varied: questions, lists, names, long clauses; no digits, so the
transcripts need no number normalisation) every backend's stream is timed from the call to
its first piece (the first audio a session could play) and to its end (RTF = synthesis time /
audio seconds, over the whole sentence). The word error rate is Levenshtein distance over
words (lower case, punctuation dropped) between each sentence and tiny.en's transcript of the
backend's 16 kHz audio of every run, summed over all sentences and runs. "piper, whole clauses" is Piper without
the quick first words (`PiperTTS.quick_start`), to show what cutting the first clause costs.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

import numpy as np

from media import SAMPLE_RATE

SENTENCES = [
    "Hello, how are you today?",
    "The weather is lovely this morning.",
    "Let me tell you a story about a small village by the sea.",
    "Could you please send me the report before the meeting tomorrow?",
    "We need eggs, milk, bread and a bag of apples.",
    "The train to Paris leaves from the north platform at noon.",
    "I am sorry, but the museum is closed on Mondays.",
    "She opened the window and listened to the rain.",
    "Turn left at the bank, then walk straight past the church.",
    "Our new phone has a brighter screen and a longer battery life.",
    "Thank you for calling, how can I help you?",
    "The children played football in the park until it got dark.",
    "My brother likes blue, but my sister prefers green.",
    "Please remember to lock the door when you leave the office.",
    "The doctor said that I should drink more water every day.",
    "Do you know where I can find a good coffee shop nearby?",
    "A quick brown fox jumps over the lazy dog.",
    "The concert was called off because the singer was ill.",
    "If it rains this afternoon, we will stay at home and read.",
    "He bought a ticket, found his seat and fell asleep at once.",
    "Can you recommend a book for a long flight?",
    "The library opens early and closes late during the exams.",
    "Mountains covered in snow rose above the quiet lake.",
    "I would like to book a table for my family this evening.",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def time_stream(backend, text: str) -> tuple[float, float, np.ndarray]:
    """(seconds to the first piece, seconds in all, the 16 kHz audio)."""
    started = time.perf_counter()
    first = None
    pieces = []
    for piece in backend.stream_labelled(text, lambda: False):
        first = first if first is not None else time.perf_counter() - started
        pieces.append(np.asarray(getattr(piece, "samples", piece), np.float32))
    return first, time.perf_counter() - started, np.concatenate(pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per sentence and backend")
    parser.add_argument("--voice", default=None, help="the Piper voice (default: en_US-joe-medium)")
    parser.add_argument("--no-wer", action="store_true", help="timings only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tts.espeak import EspeakLibrary, EspeakTTS
    from tts.piper import PiperTTS, PiperVoices, find_voice

    library = EspeakLibrary.shared()
    voices = PiperVoices()
    files = find_voice(args.voice, Path("models"), allow_paths=True)
    backends = {"espeak": EspeakTTS(library, "en-us"), "piper": PiperTTS(files, voices, library),
                "piper, whole clauses": PiperTTS(files, voices, library, quick_start=False)}
    recogniser = None
    if not args.no_wer:
        from listen.asr import WhisperASR

        recogniser = WhisperASR()
    print(f"{len(SENTENCES)} sentences, {args.repeats} timed runs each; Piper voice {files.name}")
    print("| backend | first audio p50 | p90 | RTF p50 | best | tiny.en WER |")
    print("|---|---|---|---|---|---|")
    for name, backend in backends.items():
        firsts, factors, errors, total = [], [], 0, 0
        for text in SENTENCES:
            for _ in range(args.repeats):  # Piper samples its noise: each run is a new rendition
                first, spent, audio = time_stream(backend, text)
                firsts.append(first)
                factors.append(spent / (audio.size / SAMPLE_RATE))
                if recogniser is not None:
                    heard = recogniser.transcribe(audio)
                    errors += edit_distance(words(text), words(heard))
                    total += len(words(text))
                    logging.info("%s: %r -> %r", name, text, heard)
        wer = f"{100 * errors / total:.1f} % ({errors}/{total} words)" if total else "-"
        print(f"| {name} | {np.median(firsts) * 1000:.0f} ms | {np.percentile(firsts, 90) * 1000:.0f} ms | "
              f"{np.median(factors):.3f} | {min(factors):.3f} | {wer} |", flush=True)
    voices.clear()


if __name__ == "__main__":
    main()
