"""Tiny MuseTalk weights in the official file layouts, and avatars prepared for MuseTalk.

The shapes are small (the UNet has two levels, the VAE 4-8 channels) but the
files, key names and configs follow the published checkpoints, so the real
loaders read them: musetalk.json + unet.pth / pytorch_model.bin, sd-vae-ft-mse
(config without scaling_factor, legacy attention key names), HF whisper-tiny
and openai tiny.pt (fp16, dims + model_state_dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL

from avatars.format import CROP_BOXES_FILE, FACE_BOXES_FILE, LANDMARKS_FILE, MASKS_DIR, mask_path
from avatars.prepare import write_avatar
from musetalk.unet import OFFICIAL_UNET_CONFIG, build_unet
from musetalk.vae import OFFICIAL_VAE_CONFIG
from musetalk.whisper import EncoderDims, WhisperEncoder, encoder_to_hf_keys

TINY_UNET_CONFIG = {
    **OFFICIAL_UNET_CONFIG,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],  # attention at 16x16 only: fast on CPU
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "sample_size": 32,
}
TINY_VAE_CONFIG = {**OFFICIAL_VAE_CONFIG, "block_out_channels": [4, 8, 8, 8], "layers_per_block": 1,
                   "norm_num_groups": 4}
TINY_WHISPER = EncoderDims(n_mels=80, n_ctx=1500, n_state=384, n_head=6, n_layer=4, n_mlp=64)
LEGACY_VAE_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _write_unet(folder: Path, weights_name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "musetalk.json").write_text(json.dumps(TINY_UNET_CONFIG, indent=2, sort_keys=True) + "\n")
    torch.manual_seed(seed)
    torch.save(build_unet(TINY_UNET_CONFIG).state_dict(), folder / weights_name)


def _write_vae(folder: Path, seed: int) -> None:
    """sd-vae-ft-mse layout: config.json without scaling_factor, .bin with pre-0.14 attention names."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in TINY_VAE_CONFIG.items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    torch.manual_seed(seed)
    state = AutoencoderKL.from_config(config).state_dict()
    legacy = {}
    for key, value in state.items():
        if ".attentions." in key:
            for new, old in LEGACY_VAE_ATTENTION.items():
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")


def _tiny_encoder_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return WhisperEncoder(TINY_WHISPER, ln_post_on_last=True).state_dict()


def write_hf_whisper(folder: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """openai/whisper-tiny files: config.json, pytorch_model.bin (model.encoder.* + decoder), preprocessor."""
    folder.mkdir(parents=True, exist_ok=True)
    dims = TINY_WHISPER
    config = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
              "d_model": dims.n_state, "encoder_layers": dims.n_layer, "encoder_attention_heads": dims.n_head,
              "encoder_ffn_dim": dims.n_mlp, "num_mel_bins": dims.n_mels, "max_source_positions": dims.n_ctx,
              "decoder_layers": 1, "decoder_attention_heads": 6, "decoder_ffn_dim": 64, "vocab_size": 16}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "hop_length": 160,
         "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "sampling_rate": 16000, "chunk_length": 30}))
    state = _tiny_encoder_state(seed)
    hf = encoder_to_hf_keys(state, prefix="model.encoder.")
    hf["model.decoder.embed_tokens.weight"] = torch.randn(16, dims.n_state)
    hf["proj_out.weight"] = hf["model.decoder.embed_tokens.weight"]
    torch.save(hf, folder / "pytorch_model.bin")
    return state


def write_openai_whisper(path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """openai-whisper tiny.pt: {"dims": ..., "model_state_dict": {"encoder.*", "decoder.*"}} in fp16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = EncoderDims(**{**TINY_WHISPER.__dict__, "n_mlp": 4 * TINY_WHISPER.n_state})
    torch.manual_seed(seed)
    state = WhisperEncoder(dims, ln_post_on_last=False).state_dict()
    model_state = {f"encoder.{k}": v.half() for k, v in state.items()}
    model_state["decoder.token_embedding.weight"] = torch.randn(16, dims.n_state).half()
    torch.save({"dims": {"n_mels": dims.n_mels, "n_vocab": 16, "n_audio_ctx": dims.n_ctx,
                         "n_audio_state": dims.n_state, "n_audio_head": dims.n_head, "n_audio_layer": dims.n_layer,
                         "n_text_ctx": 448, "n_text_state": dims.n_state, "n_text_head": 6, "n_text_layer": 1},
                "model_state_dict": model_state}, path)
    return state


def write_tiny_weights(models_dir: Path, versions: tuple[str, ...] = ("v15",)) -> Path:
    """models/ holding tiny MuseTalk weights for the given versions, in the official layout."""
    if "v15" in versions:
        _write_unet(models_dir / "musetalkV15", "unet.pth", seed=1)
        write_hf_whisper(models_dir / "whisper")
    if "v1" in versions:
        _write_unet(models_dir / "musetalk", "pytorch_model.bin", seed=2)
        write_openai_whisper(models_dir / "whisper" / "tiny.pt")
    _write_vae(models_dir / "sd-vae", seed=4)
    return models_dir


# ---- avatars with face data ----------------------------------------------------

FACE_BOX = (40, 40, 120, 130)  # x1, y1, x2, y2 in a 160x160 frame
CROP_BOX = (20, 30, 140, 150)  # expanded square box (120 x 120)
MOUTH_REGION = (slice(100, 125), slice(55, 105))  # rows, cols: lower face, inside the mask
OUTSIDE_REGION = (slice(0, 28), slice(0, 160))  # above the crop box: never touched by paste-back


def face_frames(background: int, count: int = 6, size: int = 160) -> list[np.ndarray]:
    """A face-like ellipse on a flat background plus a marker that moves frame by frame."""
    frames = []
    for index in range(count):
        frame = np.full((size, size, 3), background, np.uint8)
        cv2.ellipse(frame, (80, 85), (38, 46), 0, 0, 360, (120, 150, 200), -1)
        cv2.ellipse(frame, (80, 112), (14, 5), 0, 0, 360, (60, 60, 150), -1)
        x = 10 + index * 20
        cv2.rectangle(frame, (x, 4), (x + 10, 20), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def half_mask() -> np.ndarray:
    """Crop-box-sized blend mask: lower half opaque with a feathered edge, as MuseTalk's jaw mask."""
    x1, y1, x2, y2 = CROP_BOX
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    mask[(y2 - y1) // 2:, 10:-10] = 255
    return cv2.GaussianBlur(mask, (9, 9), 0)


def write_face_avatar(folder: Path, background: int, count: int = 6) -> Path:
    """An avatar folder with frames and face data in the documented format (synthetic boxes)."""
    frames = face_frames(background, count)
    write_avatar(folder, frames, {"source": "synthetic face", "fps": 25})
    landmarks = np.zeros((count, 68, 2), np.float32)
    landmarks[:, :, 0] = np.linspace(FACE_BOX[0], FACE_BOX[2], 68)
    landmarks[:, :, 1] = np.linspace(FACE_BOX[1], FACE_BOX[3], 68)
    np.save(folder / LANDMARKS_FILE, landmarks)
    np.save(folder / FACE_BOXES_FILE, np.tile(np.array(FACE_BOX, np.int32), (count, 1)))
    np.save(folder / CROP_BOXES_FILE, np.tile(np.array(CROP_BOX, np.int32), (count, 1)))
    (folder / MASKS_DIR).mkdir(exist_ok=True)
    for index in range(count):
        cv2.imwrite(str(mask_path(folder, index)), half_mask())
    return folder


def spoken(text: str, seconds: float) -> np.ndarray:
    """Real speech from espeak-ng (16 kHz float32), cut or padded to exactly `seconds`."""
    from tts.espeak import EspeakLibrary, EspeakTTS

    audio = np.concatenate(list(EspeakTTS(EspeakLibrary.shared()).stream(text, lambda: False)))
    length = int(seconds * 16000)
    return np.pad(audio[:length], (0, max(0, length - len(audio)))).astype(np.float32)


# ---- BiSeNet face parsing ----------------------------------------------------------

TINY_PARSER_WIDTH = 4  # the published network is 64 wide at the stem


def write_tiny_face_parser(models_dir: Path, label: int | None = None, seed: int = 6) -> Path:
    """models/face-parse-bisent/79999_iter.pth in the official key layout, 1/16 of the width.

    With `label`, the main head is set so the network labels every pixel `label`
    (its last ConvBNReLU outputs a constant 1, and only that class's weights are
    positive): the mask pipeline then has a known answer. Otherwise random.
    """
    from avatars.faceparse import BACKBONE_WEIGHTS, PARSER_DIR, PARSER_WEIGHTS, BiSeNet

    folder = models_dir / PARSER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = BiSeNet(TINY_PARSER_WIDTH)
    state = net.state_dict()
    if label is not None:
        state["conv_out.conv.bn.weight"].zero_()
        state["conv_out.conv.bn.bias"].fill_(1.0)
        state["conv_out.conv_out.weight"].zero_()
        state["conv_out.conv_out.weight"][label] = 1.0
    torch.save(state, folder / PARSER_WEIGHTS)
    # torchvision's ResNet-18 layout (conv1, bn1, layer1..4, fc), read by the official code only to initialise
    backbone = {k[len("cp.resnet."):]: v for k, v in state.items() if k.startswith("cp.resnet.")}
    backbone["fc.weight"] = torch.zeros(1000, 8 * TINY_PARSER_WIDTH)
    backbone["fc.bias"] = torch.zeros(1000)
    torch.save(backbone, folder / BACKBONE_WEIGHTS)
    return folder / PARSER_WEIGHTS
