"""Whisper-tiny audio encoder and its log-mel front end, for MuseTalk's audio features.

MuseTalk only needs Whisper's *encoder*: its input embedding and each residual
block's output (5 x 384 per 20 ms encoder frame). Rather than depending on
openai-whisper or transformers, this module holds a small encoder with the
same maths and maps both published checkpoint layouts onto it:

* openai `tiny.pt` (MuseTalk v1.0): ``{"dims": {...}, "model_state_dict": {"encoder.*": ...}}``
* Hugging Face `openai/whisper-tiny` (MuseTalk v1.5): ``config.json`` +
  ``pytorch_model.bin`` with ``model.encoder.*`` (or ``encoder.*``) names.

Front end: 16 kHz audio -> STFT (n_fft 400, hop 160, Hann) -> 80 slaney mel
bins -> log10, floored at (max - 8), scaled (x + 4) / 4, as Whisper does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from media import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160  # 10 ms; conv2's stride 2 then gives one encoder frame per 20 ms chunk
N_MELS = 80
LOG_MEL_DYNAMIC_RANGE = 8.0


class WhisperLoadError(Exception):
    """A whisper checkpoint is missing or malformed; the message names the file."""


def mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the slaney mel scale, slaney-normalised.

    The same filter bank librosa.filters.mel(sr, n_fft, n_mels) gives, which is
    what Whisper ships in mel_filters.npz and HF's feature extractor computes.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


_F_SP = 200.0 / 3.0  # slaney scale: linear 66.7 Hz per mel below 1 kHz, logarithmic above
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, mel)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, hz)


class LogMel(nn.Module):
    """Batched Whisper log-mel spectrogram: (N, samples) -> (N, 80, samples // 160)."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels=n_mels)), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(audio.float(), N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = self.filters @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        floor = log_spec.amax(dim=(-2, -1), keepdim=True) - LOG_MEL_DYNAMIC_RANGE
        return (torch.maximum(log_spec, floor) + 4.0) / 4.0


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table (sin half, cos half)."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


@dataclass(frozen=True)
class EncoderDims:
    n_mels: int = N_MELS
    n_ctx: int = 1500  # encoder frames in a 30 s window
    n_state: int = 384
    n_head: int = 6
    n_layer: int = 4
    n_mlp: int = 1536


class _SelfAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = [p(x).view(batch, length, self.n_head, -1).transpose(1, 2) for p in (self.query, self.key, self.value)]
        attended = F.scaled_dot_product_attention(*heads)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    def __init__(self, dims: EncoderDims):
        super().__init__()
        self.attn = _SelfAttention(dims.n_state, dims.n_head)
        self.attn_ln = nn.LayerNorm(dims.n_state)
        self.mlp = nn.Sequential(nn.Linear(dims.n_state, dims.n_mlp), nn.GELU(), nn.Linear(dims.n_mlp, dims.n_state))
        self.mlp_ln = nn.LayerNorm(dims.n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder, returning every layer (what MuseTalk feeds its UNet).

    MuseTalk, like whisper itself, runs it on 30 s inputs (3000 mel frames ->
    1500 encoder frames with the whole positional table); museasr.py pads
    every streaming window to 30 s, so the features are the offline ones.
    Shorter inputs are accepted (positions 0..T-1) but change every feature.
    """

    def __init__(self, dims: EncoderDims, ln_post_on_last: bool):
        super().__init__()
        self.dims = dims
        self.ln_post_on_last = ln_post_on_last
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_state, dims.n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_ctx, dims.n_state))
        self.blocks = nn.ModuleList(_Block(dims) for _ in range(dims.n_layer))
        self.ln_post = nn.LayerNorm(dims.n_state)

    @property
    def n_outputs(self) -> int:
        return self.dims.n_layer + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, 2T) log-mel -> (N, T, n_layer + 1, n_state) per-layer features.

        Layer 0 is the embedding (convs + positions), layer k the output of block k.
        v1.0 (openai-whisper fork) takes the last block before ln_post; v1.5
        (transformers' hidden_states) takes it after the final layer norm.
        """
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        length = x.shape[1]
        if length > self.dims.n_ctx:
            raise ValueError(f"audio window of {length} encoder frames exceeds whisper's {self.dims.n_ctx}")
        x = x + self.positional_embedding[:length].to(x.dtype)
        layers = [x]
        for block in self.blocks:
            x = block(x)
            layers.append(x)
        if self.ln_post_on_last:
            layers[-1] = self.ln_post(x)
        return torch.stack(layers, dim=2)


# ---- checkpoint layouts ------------------------------------------------------

OPENAI_CHECKPOINT = "tiny.pt"
HF_CONFIG = "config.json"
HF_WEIGHTS = "pytorch_model.bin"

_HF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise WhisperLoadError(f"cannot read {path} ({type(exc).__name__}: {exc}): the file is corrupt") from None


def _finish(encoder: WhisperEncoder, state: dict[str, torch.Tensor], path: Path) -> WhisperEncoder:
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WhisperLoadError(
            f"{path} does not match a whisper encoder: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WhisperLoadError(f"{path}: tensor shapes differ from its config for {wrong[:4]}")
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    return encoder.eval()


def load_openai_encoder(path: Path, ln_post_on_last: bool = False) -> WhisperEncoder:
    """Encoder from an openai-whisper checkpoint (tiny.pt: dims + model_state_dict)."""
    if not path.is_file():
        raise WhisperLoadError(f"whisper checkpoint {path} not found")
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise WhisperLoadError(f"{path} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    d = checkpoint["dims"]
    try:
        dims = EncoderDims(n_mels=d["n_mels"], n_ctx=d["n_audio_ctx"], n_state=d["n_audio_state"],
                           n_head=d["n_audio_head"], n_layer=d["n_audio_layer"], n_mlp=4 * d["n_audio_state"])
    except KeyError as exc:
        raise WhisperLoadError(f"{path}: 'dims' lacks {exc}") from None
    state = {k[len("encoder."):]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith("encoder.")}
    return _finish(WhisperEncoder(dims, ln_post_on_last), state, path)


def load_hf_encoder(folder: Path, ln_post_on_last: bool = True) -> WhisperEncoder:
    """Encoder from Hugging Face whisper files (config.json + pytorch_model.bin)."""
    config_path, weights_path = folder / HF_CONFIG, folder / HF_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WhisperLoadError(f"whisper file {path} not found")
    try:
        config = json.loads(config_path.read_text())
        dims = EncoderDims(n_mels=config["num_mel_bins"], n_ctx=config["max_source_positions"],
                           n_state=config["d_model"], n_head=config["encoder_attention_heads"],
                           n_layer=config["encoder_layers"], n_mlp=config["encoder_ffn_dim"])
    except (ValueError, KeyError) as exc:
        raise WhisperLoadError(f"{config_path} is not a whisper config ({exc})") from None
    raw = _torch_load(weights_path)
    if not isinstance(raw, dict):
        raise WhisperLoadError(f"{weights_path} is not a state dict")
    return _finish(WhisperEncoder(dims, ln_post_on_last), hf_to_encoder_keys(raw), weights_path)


def hf_to_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF whisper encoder tensors to this module's (openai-style) names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("model.encoder.", "encoder."):
            if key.startswith(prefix):
                name = key[len(prefix):]
                break
        else:
            continue
        if name == "embed_positions.weight":
            name = "positional_embedding"
        elif name.startswith("layer_norm."):
            name = "ln_post." + name[len("layer_norm."):]
        elif name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            for hf, ours in _HF_BLOCK_NAMES.items():
                if rest.startswith(hf + "."):
                    rest = ours + rest[len(hf):]
                    break
            name = f"blocks.{index}.{rest}"
        out[name] = value
    return out


def encoder_to_hf_keys(state: dict[str, torch.Tensor], prefix: str = "model.encoder.") -> dict[str, torch.Tensor]:
    """The inverse of hf_to_encoder_keys (writes checkpoints in the HF layout)."""
    inverse = {ours: hf for hf, ours in _HF_BLOCK_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name == "positional_embedding":
            hf = "embed_positions.weight"
        elif name.startswith("ln_post."):
            hf = "layer_norm." + name[len("ln_post."):]
        elif name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            for ours, theirs in inverse.items():
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours):]
                    break
            hf = f"layers.{index}.{rest}"
        else:
            hf = name
        out[prefix + hf] = value
    return out
