"""MuseTalk inference speed: full-size architecture, RANDOM WEIGHTS (timing only, the output is noise).

Times, per batch of B video frames:
  * whisper step: log-mel + whisper-tiny encoder over the streaming window
    (left + 2B + right chunks of 20 ms), as MuseASR runs it once per batch;
  * UNet (850 M parameters, 8x32x32 latents, 50x384 audio tokens, t = 0);
  * VAE decode of B 4x32x32 latents to 256x256 faces;
and reports frames/s of UNet + VAE decode (the per-frame cost) and with whisper.

    python bench/bench_musetalk.py --device cpu --batch-sizes 1 4 --iters 2       # CPU, short
    python bench/bench_musetalk.py --device cuda --dtype fp16 --channels-last     # GPU
    python bench/bench_musetalk.py --device cuda --dtype fp16 --compile

Anchors: MuseTalk reports 30 fps on a V100 (fp16, ~32 ms/frame); LiveTalking
reports 72 fps for musetalk on an RTX 4090.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from museasr import AudioWindow, encode_windows  # noqa: E402
from musetalk.loader import MuseTalkModels, place  # noqa: E402
from musetalk.unet import OFFICIAL_UNET_CONFIG, PositionalEncoding, build_unet  # noqa: E402
from musetalk.vae import OFFICIAL_VAE_CONFIG, decode_to_bgr  # noqa: E402
from musetalk.whisper import EncoderDims, LogMel, WhisperEncoder  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHUNK = 320


def build_models(device: torch.device, dtype: torch.dtype, channels_last: bool) -> MuseTalkModels:
    torch.manual_seed(0)
    with torch.device(device):
        unet = build_unet(OFFICIAL_UNET_CONFIG, device)
        vae = AutoencoderKL.from_config(OFFICIAL_VAE_CONFIG)
        whisper = WhisperEncoder(EncoderDims(), ln_post_on_last=True)
    models = MuseTalkModels(version="v15", unet=place(unet, device, dtype), vae=place(vae, device, dtype),
                            pe=PositionalEncoding().to(device), whisper=place(whisper, device, dtype),
                            log_mel=LogMel().to(device), device=device, dtype=dtype)
    if channels_last:
        models.unet.to(memory_format=torch.channels_last)
        models.vae.to(memory_format=torch.channels_last)
    return models


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_batch(models: MuseTalkModels, unet, decode, batch: int, args) -> dict:
    device, dtype = models.device, models.dtype
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    latents = torch.randn(batch, 8, 32, 32, device=device, dtype=dtype).to(memory_format=memory)
    audio = models.pe(torch.randn(batch, 50, 384, device=device)).to(dtype)
    chunks = args.left + 2 * batch + args.right
    window = AudioWindow(np.random.default_rng(0).standard_normal(chunks * CHUNK).astype(np.float32) * 0.1,
                         first_chunk=args.left, frames=batch)
    out = {"whisper": [], "unet": [], "vae": []}
    with torch.inference_mode():
        for iteration in range(args.warmup + args.iters):
            t_whisper = timed(lambda: encode_windows(models, [window]), device)
            result = {}
            t_unet = timed(lambda: result.setdefault("x", unet(latents, 0, encoder_hidden_states=audio).sample), device)
            t_vae = timed(lambda: decode(result["x"]), device)
            if iteration >= args.warmup:
                out["whisper"].append(t_whisper)
                out["unet"].append(t_unet)
                out["vae"].append(t_vae)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and the VAE decoder")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--left", type=int, default=10, help="left audio context, 20 ms chunks")
    parser.add_argument("--right", type=int, default=10, help="right audio context, 20 ms chunks")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)

    started = time.perf_counter()
    models = build_models(device, dtype, args.channels_last)
    unet = torch.compile(models.unet) if args.compile else models.unet
    vae = models.vae
    if args.compile:
        vae.decoder = torch.compile(vae.decoder)
    decode = lambda latents: decode_to_bgr(vae, latents)  # noqa: E731
    params = sum(p.numel() for p in models.unet.parameters()) / 1e6
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print("RANDOM WEIGHTS: timing only (full-size MuseTalk architecture, output is noise)")
    print(f"device {device} ({hardware}), {str(dtype).replace('torch.', '')}, channels_last={args.channels_last}, "
          f"compile={args.compile}, UNet {params:.1f} M params, built in {time.perf_counter() - started:.1f} s, "
          f"torch {torch.__version__}, iters {args.iters} (+{args.warmup} warm-up), window {args.left}+2B+{args.right} chunks")
    print()
    print("| batch | whisper step / batch | UNet / frame | VAE decode / frame | UNet+VAE fps | fps incl. whisper |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch_sizes:
        t = bench_batch(models, unet, decode, batch, args)
        per_frame = (t["unet"] + t["vae"]) / batch
        with_whisper = (t["unet"] + t["vae"] + t["whisper"]) / batch
        print(f"| {batch} | {t['whisper'] * 1000:.1f} ms | {t['unet'] / batch * 1000:.1f} ms | "
              f"{t['vae'] / batch * 1000:.1f} ms | {1 / per_frame:.2f} | {1 / with_whisper:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
