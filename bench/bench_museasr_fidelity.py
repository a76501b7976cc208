"""How close streaming whisper features are to MuseTalk's offline ones (full-size whisper-tiny, RANDOM weights).

For one espeak utterance, the offline reference is MuseTalk v1.5's computation
over the whole finished utterance (padded to 30 s, trimmed, zero edges). It is
compared per voiced frame (relative L2 error, median and p95) with:
  * this project's streaming window (museasr.MuseASR: 30 s window from the
    utterance start, right context -r, batches as the server forms them);
  * the former short-window design: whisper on [10 chunks of history | batch
    | 10 chunks ahead] alone, positions 0..T-1, its own log-mel ceiling,
    silence before the utterance and after its end.
Random weights say nothing about lip-sync quality; they show how far each
design's input is from what the model was trained on.

    python -m bench.bench_museasr_fidelity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import torch

from media import CHUNK_SAMPLES, AudioChunk
from museasr import MuseASR
from musetalk.features import batch_features, edge_indices, encode_windows, frame_indices, padded, slice_features
from musetalk.loader import MuseTalkModels
from musetalk.unet import PositionalEncoding
from musetalk.whisper import EncoderDims, LogMel, WhisperEncoder

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."
SHORT_CONTEXT = 10  # chunks each side in the former design


def speech_chunks(text: str) -> list[AudioChunk]:
    from tts.espeak import EspeakLibrary, EspeakTTS

    audio = np.concatenate(list(EspeakTTS(EspeakLibrary.shared()).stream(text, lambda: False)))
    audio = audio[: len(audio) // (2 * CHUNK_SAMPLES) * 2 * CHUNK_SAMPLES].astype(np.float32)
    return [AudioChunk(audio[i:i + CHUNK_SAMPLES], True, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]


@torch.inference_mode()
def offline(models: MuseTalkModels, chunks: list[AudioChunk]) -> torch.Tensor:
    audio = np.concatenate([c.samples for c in chunks])
    layers = models.whisper(models.log_mel(torch.from_numpy(padded(audio))[None]))[0]
    indices = edge_indices(frame_indices(2 * np.arange(len(chunks) // 2)), 0, len(chunks), "zero")
    return slice_features(layers, indices)


@torch.inference_mode()
def streaming(models: MuseTalkModels, chunks: list[AudioChunk], batch: int, right: int) -> torch.Tensor:
    asr = MuseASR(fps=25, right_chunks=right, edge="zero", max_batch=batch)
    out, position, size = [], 0, 2
    while position < len(chunks):
        taken = chunks[position:position + 2 * size]
        taken += [AudioChunk.silence(0)] * (2 * size - len(taken))
        audio = asr.window(taken, chunks[position + 2 * size:position + 2 * size + right])
        out.append(batch_features(audio, encode_windows(models, list(audio.windows))))
        position += 2 * size
        size = min(2 * size, batch)
    return torch.cat(out)[: len(chunks) // 2]


@torch.inference_mode()
def short_windows(models: MuseTalkModels, chunks: list[AudioChunk], batch: int) -> torch.Tensor:
    silence = np.zeros(CHUNK_SAMPLES, np.float32)
    samples = [silence] * SHORT_CONTEXT + [c.samples for c in chunks] + [silence] * (SHORT_CONTEXT + 2 * batch)
    out = []
    for start in range(0, len(chunks), 2 * batch):
        window = np.concatenate(samples[start:start + 2 * SHORT_CONTEXT + 2 * batch])
        layers = models.whisper(models.log_mel(torch.from_numpy(window)[None]))[0]
        out.append(slice_features(layers, frame_indices(SHORT_CONTEXT + 2 * np.arange(batch))))
    return torch.cat(out)[: len(chunks) // 2]


def errors(candidate: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    return ((candidate - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="a session's batch (the server's --batch_size)")
    parser.add_argument("--right", type=int, default=10, help="right context, 20 ms chunks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    whisper = WhisperEncoder(EncoderDims(), ln_post_on_last=True).eval()
    models = MuseTalkModels(version="v15", unet=None, vae=None, pe=PositionalEncoding(), whisper=whisper,
                            log_mel=LogMel(), device=torch.device("cpu"), dtype=torch.float32)
    chunks = speech_chunks(TEXT)
    reference = offline(models, chunks)
    print(f"RANDOM whisper-tiny weights (seed {args.seed}); utterance {len(chunks) * 0.02:.2f} s, "
          f"{reference.shape[0]} frames; session batch {args.batch}, right context {args.right} chunks")
    print()
    print("| design | relative error vs offline, median | p95 | max |")
    print("|---|---:|---:|---:|")
    for name, features in (("30 s window from the utterance start (now)", streaming(models, chunks, args.batch,
                                                                                      args.right)),
                           ("short window, positions 0..T-1 (before)", short_windows(models, chunks, args.batch))):
        e = errors(features, reference)
        print(f"| {name} | {np.median(e):.3f} | {np.percentile(e, 95):.3f} | {e.max():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
