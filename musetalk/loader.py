"""Loading MuseTalk's weights from the official models/ layout, with errors that say what to do.

    models/musetalkV15/{musetalk.json, unet.pth}          v1.5 UNet
    models/musetalk/{musetalk.json, pytorch_model.bin}    v1.0 UNet
    models/sd-vae/{config.json, diffusion_pytorch_model.bin}
    models/whisper/{config.json, pytorch_model.bin, ...}  HF whisper-tiny (v1.5)
    models/whisper/tiny.pt                                openai whisper tiny (v1.0)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from musetalk.unet import AUDIO_DIM, PositionalEncoding, build_unet, read_unet_config
from musetalk.whisper import (HF_CONFIG, HF_WEIGHTS, OPENAI_CHECKPOINT, LogMel, WhisperEncoder, WhisperLoadError,
                              load_hf_encoder, load_openai_encoder)

logger = logging.getLogger(__name__)

VERSIONS = ("v15", "v1")
UNET_CONFIG = "musetalk.json"
UNET_FILES = {"v15": ("musetalkV15", "unet.pth"), "v1": ("musetalk", "pytorch_model.bin")}
VAE_DIR = "sd-vae"
VAE_CONFIG = "config.json"
VAE_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors")
WHISPER_DIR = "whisper"
FEATURE_LAYERS = 5  # whisper-tiny: embedding + 4 blocks
HINT = "run `python -m tools.download_models` or use --model lite"


class WeightsError(Exception):
    """MuseTalk weights are missing or unusable; the message names the file and the fix."""


def detect_version(models_dir: Path) -> str:
    """v15 when its UNet is present, else v1 when that one is, else an error."""
    for version in VERSIONS:
        folder, name = UNET_FILES[version]
        if (models_dir / folder / name).is_file():
            return version
    raise WeightsError(f"MuseTalk weights not found in {models_dir / UNET_FILES['v15'][0]}: {HINT}")


def required_files(models_dir: Path, version: str) -> list[Path]:
    """Every file the loader reads for `version` (download_models.py fetches these)."""
    folder, name = UNET_FILES[version]
    whisper = models_dir / WHISPER_DIR
    whisper_files = [whisper / HF_CONFIG, whisper / HF_WEIGHTS] if version == "v15" else [whisper / OPENAI_CHECKPOINT]
    return [models_dir / folder / UNET_CONFIG, models_dir / folder / name,
            models_dir / VAE_DIR / VAE_CONFIG, models_dir / VAE_DIR / VAE_WEIGHTS[0], *whisper_files]


@dataclass
class MuseTalkModels:
    """Everything inference needs, on one device in one dtype (shared read-only)."""

    version: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    pe: PositionalEncoding
    whisper: WhisperEncoder
    log_mel: LogMel
    device: torch.device
    dtype: torch.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (what MuseTalk's realtime script runs), fp32 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_models(models_dir: Path, version: str = "auto", device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> MuseTalkModels:
    """Read and place every MuseTalk model (blocking, seconds to a minute for full-size weights)."""
    models_dir = Path(models_dir)
    if version == "auto":
        version = detect_version(models_dir)
    if version not in VERSIONS:
        raise WeightsError(f"unknown MuseTalk version {version!r}: choose one of {', '.join(VERSIONS)}")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    unet = load_unet(models_dir, version)
    vae = load_vae(models_dir)
    whisper = load_whisper(models_dir, version)
    cross_dim = unet.config.cross_attention_dim
    if whisper.dims.n_state != AUDIO_DIM or cross_dim != AUDIO_DIM or whisper.n_outputs != FEATURE_LAYERS:
        raise WeightsError(
            f"whisper width {whisper.dims.n_state} x {whisper.n_outputs} layers does not fit the UNet's "
            f"cross-attention {cross_dim} (MuseTalk needs whisper-tiny: {AUDIO_DIM} x {FEATURE_LAYERS}): {HINT}"
        )
    logger.info("MuseTalk %s loaded from %s on %s (%s)", version, models_dir, device, str(dtype).replace("torch.", ""))
    return MuseTalkModels(
        version=version,
        unet=place(unet, device, dtype),
        vae=place(vae, device, dtype),
        pe=PositionalEncoding().to(device),
        whisper=place(whisper, device, dtype),
        log_mel=LogMel().to(device),
        device=device,
        dtype=dtype,
    )


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device, cast floating tensors to dtype, freeze for inference.

    (Casting with .half()/.float() rather than .to(dtype) avoids diffusers'
    warning about fp32-only modules, which these models do not have.)
    """
    module = module.to(device)
    cast = {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}
    if dtype not in cast:
        raise ValueError(f"unsupported dtype {dtype}: use float16, bfloat16 or float32")
    return cast[dtype]().eval().requires_grad_(False)


def load_unet(models_dir: Path, version: str) -> UNet2DConditionModel:
    folder_name, weights_name = UNET_FILES[version]
    folder = models_dir / folder_name
    config_path, weights_path = folder / UNET_CONFIG, folder / weights_name
    if not weights_path.is_file() or not config_path.is_file():
        missing = weights_path if not weights_path.is_file() else config_path
        raise WeightsError(f"MuseTalk weights not found in {folder} ({missing.name} is missing): {HINT}")
    try:
        config = read_unet_config(config_path)
        unet = build_unet(config, "meta")
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{config_path} is not a valid MuseTalk config ({exc}): {HINT}") from None
    state = _load_state_dict(weights_path)
    expected = set(unet.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{weights_path} does not match {config_path.name} ({len(missing)} tensors missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}): {HINT}"
        )
    try:
        unet.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights_path} has tensors of the wrong shape for {config_path.name}: {exc}") from None
    return unet


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load, memory-mapped when the file allows (a 3.4 GB UNet is not copied twice)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, foreign formats
        raise WeightsError(
            f"cannot read {path} ({type(exc).__name__}): the file is corrupt or incomplete: "
            f"run `python -m tools.download_models` again (it resumes) or use --model lite"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors: {HINT}")
    return state


def load_vae(models_dir: Path) -> AutoencoderKL:
    folder = models_dir / VAE_DIR
    if not (folder / VAE_CONFIG).is_file() or not any((folder / name).is_file() for name in VAE_WEIGHTS):
        raise WeightsError(f"VAE weights (sd-vae-ft-mse) not found in {folder}: {HINT}")
    try:
        vae, info = AutoencoderKL.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=False, output_loading_info=True,
            use_safetensors=(folder / VAE_WEIGHTS[1]).is_file())
    except Exception as exc:  # diffusers raises OSError/ValueError/RuntimeError for bad files
        raise WeightsError(f"cannot load the VAE from {folder} ({type(exc).__name__}: {exc}): {HINT}") from None
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        # diffusers only warns and leaves such tensors random; a half-loaded VAE must not run.
        raise WeightsError(f"the VAE weights in {folder} do not match its config.json ({problems}): {HINT}")
    return vae


def load_whisper(models_dir: Path, version: str) -> WhisperEncoder:
    folder = models_dir / WHISPER_DIR
    try:
        if version == "v15":
            return load_hf_encoder(folder, ln_post_on_last=True)
        return load_openai_encoder(folder / OPENAI_CHECKPOINT, ln_post_on_last=False)
    except WhisperLoadError as exc:
        raise WeightsError(f"{exc}: {HINT}") from None
