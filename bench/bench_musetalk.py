"""MuseTalk inference speed: full-size architecture, RANDOM WEIGHTS (timing only, the output is noise).

Part 1, per batch of B video frames:
  * whisper step: log-mel + whisper-tiny encoder over one 30 s padded window,
    as MuseASR runs it once per batch (and, for comparison, over the short
    10 + 2B + 10 chunk window the project used before);
  * UNet (850 M parameters, 8x32x32 latents, 50x384 audio tokens, t = 0);
  * VAE decode of B 4x32x32 latents to 256x256 faces.
Part 2 (--sessions): N live sessions (MuseReal engines: render + compose
threads, the one shared inference worker) each speaking --speech-seconds of
audio, their output drained at 25 fps like the wire: aggregate and
per-session voiced fps, first voiced frame after the audio arrived, late
frames, GPU memory per session. No WebRTC (VP8 encoding is CPU work).

    python -m bench.bench_musetalk --device cpu --batch-sizes 1 4 --iters 2 --warmup 1   # CPU, part 1
    python -m bench.bench_musetalk --device cpu --whisper-only --threads 1 --batch-sizes 1 8 32 --iters 5
    python -m bench.bench_musetalk --gpu-suite          # one command, CUDA: every GPU figure of BENCHMARKS.md
    python -m bench.bench_musetalk --device cuda --musetalk-compile reduce-overhead --sessions 1 2 4 8 16
    python -m bench.bench_musetalk --smoke --sessions 1 2   # tiny models: checks the code path, numbers meaningless

Anchors: MuseTalk reports 30 fps on a V100 (fp16, ~32 ms/frame); LiveTalking
reports 72 fps for musetalk on an RTX 4090.
"""

from __future__ import annotations

import argparse
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import torch
from diffusers import AutoencoderKL

from media import CHUNK_SAMPLES, AudioChunk
from musetalk.features import AudioWindow, encode_windows
from musetalk.accel import accelerate
from musetalk.loader import MuseTalkModels, place
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, MuseTalkSettings, add_arguments
from musetalk.unet import OFFICIAL_UNET_CONFIG, PositionalEncoding, build_unet
from musetalk.vae import OFFICIAL_VAE_CONFIG, decode_to_bgr
from musetalk.whisper import EncoderDims, LogMel, WhisperEncoder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SMOKE_UNET = {**OFFICIAL_UNET_CONFIG, "block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 32,
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}
SMOKE_VAE = {**OFFICIAL_VAE_CONFIG, "block_out_channels": [4, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4}
GPU_SUITE = [  # (label, extra arguments): what BENCHMARKS.md asks of a GPU
    ("fp16", []),
    ("fp16 channels_last", ["--musetalk-channels-last"]),
    ("fp16 torch.compile", ["--musetalk-compile", "default"]),
    ("fp16 CUDA graphs", ["--musetalk-compile", "reduce-overhead"]),
    ("fp16 CUDA graphs, live sessions", ["--musetalk-compile", "reduce-overhead", "--batch-sizes",
                                         "--sessions", "1", "2", "4", "8", "16"]),
]


def build_models(device: torch.device, dtype: torch.dtype, smoke: bool) -> MuseTalkModels:
    torch.manual_seed(0)
    with torch.device(device):
        unet = build_unet(SMOKE_UNET if smoke else OFFICIAL_UNET_CONFIG, device)
        vae = AutoencoderKL.from_config(SMOKE_VAE if smoke else OFFICIAL_VAE_CONFIG)
        whisper = WhisperEncoder(EncoderDims(n_mlp=64) if smoke else EncoderDims(), ln_post_on_last=True)
    return MuseTalkModels(version="v15", unet=place(unet, device, dtype), vae=place(vae, device, dtype),
                          pe=PositionalEncoding().to(device), whisper=place(whisper, device, dtype),
                          log_mel=LogMel().to(device), device=device, dtype=dtype)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_batch(models: MuseTalkModels, batch: int, args) -> dict:
    device, dtype = models.device, models.dtype
    memory = torch.channels_last if args.musetalk_channels_last else torch.contiguous_format
    latents = torch.randn(batch, 8, 32, 32, device=device, dtype=dtype).to(memory_format=memory)
    audio = models.pe(torch.randn(batch, 50, 384, device=device)).to(dtype)
    chunks = 2 * batch + args.right
    samples = np.random.default_rng(0).standard_normal(chunks * CHUNK_SAMPLES).astype(np.float32) * 0.1
    window = AudioWindow(samples, rows=np.arange(batch), indices=np.zeros((batch, 10), np.int64))
    short = torch.from_numpy(np.concatenate([np.zeros(DEFAULT_CONTEXT_CHUNKS * CHUNK_SAMPLES, np.float32),
                                             samples]))[None].to(device)

    def short_window() -> None:  # the former design: the window alone, positions 0..T-1
        models.whisper(models.log_mel(short).to(dtype))

    out = {"whisper": [], "short": [], "unet": [], "vae": []}
    with torch.inference_mode():
        for iteration in range(args.warmup + args.iters):
            t_whisper = timed(lambda: encode_windows(models, [window]), device)
            t_short = timed(short_window, device)
            t_unet = t_vae = 0.0
            if not args.whisper_only:
                result = {}
                t_unet = timed(lambda: result.setdefault(
                    "x", models.unet(latents, 0, encoder_hidden_states=audio).sample), device)
                t_vae = timed(lambda: decode_to_bgr(models.vae, result["x"]), device)
            if iteration >= args.warmup:
                for key, value in (("whisper", t_whisper), ("short", t_short), ("unet", t_unet), ("vae", t_vae)):
                    out[key].append(value)
    return {k: statistics.median(v) for k, v in out.items()}


# ---- live sessions ----------------------------------------------------------------------------

@dataclass
class SessionResult:
    voiced: int = 0
    first_voiced_s: float | None = None  # after the first chunk was queued
    late: int = 0  # frames that reached the 25 fps drain after their tick
    span_s: float = 0.0  # first to last voiced frame


def synthetic_avatar(folder: Path, frames: int = 8, size: int = 512):
    """An avatar folder (face data + random latents) in the real format, read back by load_avatar."""
    from avatars.store import load_avatar
    from avatars.tracking import FaceData
    from avatars.prepare import write_avatar

    rng = np.random.default_rng(1)
    images = [rng.integers(60, 200, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    box = np.array([176, 150, 336, 350], np.int32)
    crop = np.array([106, 100, 406, 400], np.int32)
    mask = np.zeros((300, 300), np.uint8)
    mask[150:280, 30:270] = 255
    face = FaceData(np.zeros((frames, 68, 2), np.float32), np.tile(box, (frames, 1)), np.tile(crop, (frames, 1)),
                    [mask] * frames)
    write_avatar(folder, images, {"source": "benchmark noise", "fps": 25}, face)
    torch.save({"format": 1, "version": "v15", "latents": torch.randn(frames, 8, 32, 32)}, folder / "latents.pt")
    return load_avatar(folder)


def run_session(engine, seconds: float, rng: np.random.Generator, result: SessionResult) -> None:
    """Queue `seconds` of (noise) speech and drain the engine at 25 fps, as the wire would."""
    chunks = int(seconds * 50)
    audio = (rng.standard_normal(chunks * CHUNK_SAMPLES) * 0.1).astype(np.float32)

    def feed() -> None:
        for i in range(chunks):
            if not engine.put_audio(AudioChunk(audio[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES], True, engine.epoch)):
                return

    started = time.perf_counter()
    feeder = threading.Thread(target=feed, name="bench-feed", daemon=True)
    feeder.start()
    tick, first, last = 0, None, None
    deadline = started + 10 * seconds + 60
    while result.voiced < chunks // 2 and time.perf_counter() < deadline:
        due = started + tick / 25
        time.sleep(max(0.0, due - time.perf_counter()))
        try:
            bundle = engine.output.get(timeout=1.0)
        except queue.Empty:  # the engine is behind
            continue
        now = time.perf_counter()
        tick += 1
        if bundle.speech:
            result.voiced += 1
            first = first if first is not None else now
            last = now
            result.late += now > due + 0.04
    feeder.join(5)
    if first is not None:
        result.first_voiced_s = first - started
        result.span_s = last - first


def bench_sessions(models: MuseTalkModels, counts: list[int], args) -> None:
    from basereal import EngineConfig
    from musereal import MuseReal, MuseTalkRuntime

    settings = MuseTalkSettings(right_chunks=args.right, max_batch=args.max_batch,
                                channels_last=args.musetalk_channels_last, compile=args.musetalk_compile)
    runtime = MuseTalkRuntime(models, settings)
    with tempfile.TemporaryDirectory() as tmp:
        avatar = synthetic_avatar(Path(tmp) / "bench")
        print()
        print(f"Live sessions: {args.speech_seconds:g} s of speech each, session batch {args.session_batch}, "
              f"worker max batch {args.max_batch}, right context {args.right} chunks")
        print()
        print("| sessions | aggregate voiced fps | per-session fps (min / median) | first voiced frame (median / max) "
              "| late frames | GPU memory / session |")
        print("|---:|---:|---:|---:|---:|---:|")
        try:
            for count in counts:
                if models.device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                engines = [MuseReal(avatar, EngineConfig(fps=25, batch_size=args.session_batch), f"bench-{i}",
                                    runtime=runtime) for i in range(count)]
                results = [SessionResult() for _ in engines]
                for engine in engines:
                    engine.start()
                threads = [threading.Thread(target=run_session, name=f"bench-session-{i}",
                                            args=(e, args.speech_seconds, np.random.default_rng(i), r), daemon=True)
                           for i, (e, r) in enumerate(zip(engines, results))]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                wall = time.perf_counter() - started
                for engine in engines:
                    engine.stop()
                per = [r.voiced / r.span_s if r.span_s else 0.0 for r in results]
                firsts = [r.first_voiced_s * 1000 for r in results if r.first_voiced_s is not None]
                memory = "n/a"
                if models.device.type == "cuda":
                    memory = f"{(torch.cuda.max_memory_allocated() - base) / count / 2**20:.0f} MiB"
                late = sum(r.late for r in results) / max(1, sum(r.voiced for r in results))
                print(f"| {count} | {sum(r.voiced for r in results) / wall:.1f} | {min(per):.1f} / "
                      f"{statistics.median(per):.1f} | {statistics.median(firsts):.0f} / {max(firsts):.0f} ms | "
                      f"{late:.1%} | {memory} |", flush=True)
        finally:
            runtime.close()


def gpu_suite(args) -> int:
    """Every GPU configuration, each in a fresh process (compiled graphs and memory stay separate)."""
    for label, extra in GPU_SUITE:
        print(f"\n### {label}\n", flush=True)
        command = [sys.executable, __file__, "--device", "cuda", "--dtype", "fp16", "--iters", str(args.iters),
                   *extra]
        if subprocess.run(command).returncode:
            print(f"{label}: failed", flush=True)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--right", type=int, default=DEFAULT_CONTEXT_CHUNKS, help="right audio context, 20 ms chunks")
    parser.add_argument("--sessions", type=int, nargs="*", default=[], help="live-session counts to run")
    parser.add_argument("--speech-seconds", type=float, default=8.0)
    parser.add_argument("--session-batch", type=int, default=8, help="a session's batch (the server's --batch_size)")
    parser.add_argument("--max-batch", type=int, default=32, help="frames per worker pass over all sessions")
    parser.add_argument("--whisper-only", action="store_true", help="part 1 times the whisper step only")
    parser.add_argument("--smoke", action="store_true", help="tiny models: exercise the code, numbers meaningless")
    parser.add_argument("--gpu-suite", action="store_true", help="run every GPU configuration (CUDA)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.gpu_suite:
        return gpu_suite(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)

    started = time.perf_counter()
    models = build_models(device, dtype, args.smoke)
    params = sum(p.numel() for p in models.unet.parameters()) / 1e6
    if args.batch_sizes:  # the live part applies the speed-ups itself (MuseTalkRuntime)
        accelerate(models, args.musetalk_channels_last, args.musetalk_compile)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(("SMOKE RUN, tiny models: numbers are meaningless" if args.smoke else
           "RANDOM WEIGHTS: timing only (full-size MuseTalk architecture, output is noise)"))
    print(f"device {device} ({hardware}), {str(dtype).replace('torch.', '')}, "
          f"channels_last={args.musetalk_channels_last}, compile={args.musetalk_compile}, UNet {params:.1f} M params, "
          f"built in {time.perf_counter() - started:.1f} s, torch {torch.__version__}, "
          f"iters {args.iters} (+{args.warmup} warm-up)")
    if args.batch_sizes:
        columns = ["batch", "whisper step / batch (30 s window)", "whisper, short window (before)"]
        if not args.whisper_only:
            columns += ["UNet / frame", "VAE decode / frame", "UNet+VAE fps", "fps incl. whisper"]
        print()
        print("| " + " | ".join(columns) + " |")
        print("|" + "---:|" * len(columns))
        for batch in args.batch_sizes:
            t = bench_batch(models, batch, args)
            cells = [str(batch), f"{t['whisper'] * 1000:.1f} ms", f"{t['short'] * 1000:.1f} ms"]
            if not args.whisper_only:
                per_frame = (t["unet"] + t["vae"]) / batch
                with_whisper = (t["unet"] + t["vae"] + t["whisper"]) / batch
                cells += [f"{t['unet'] / batch * 1000:.1f} ms", f"{t['vae'] / batch * 1000:.1f} ms",
                          f"{1 / per_frame:.2f}", f"{1 / with_whisper:.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    if args.sessions:
        if args.batch_sizes:  # part 1 applied the speed-ups already: start the live part from fresh models
            models = None
            models = build_models(device, dtype, args.smoke)
        bench_sessions(models, args.sessions, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
