"""MuseTalk weight loading: the official layouts, named errors, the full-size architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from musetalk.loader import WeightsError, detect_version, load_models, load_unet, required_files
from musetalk.unet import PositionalEncoding, expected_unet_keys
from musetalk.vae import decode_to_bgr, encode_for_unet
from musetalk.whisper import (LogMel, hf_to_encoder_keys, load_hf_encoder, load_openai_encoder, mel_filters,
                              _hz_to_mel, _mel_to_hz)
from musetalk.unet import OFFICIAL_UNET_CONFIG
from tests.support.musetalk_fixtures import TINY_UNET_CONFIG, write_tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "models", ("v15", "v1"))


@pytest.fixture
def models_copy(weights, tmp_path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(weights, target)
    return target


def test_v15_layout_loads_every_model(weights):
    models = load_models(weights, "v15", device="cpu")
    assert models.version == "v15" and models.dtype == torch.float32
    assert models.unet.config.in_channels == 8 and models.unet.config.cross_attention_dim == 384
    saved = torch.load(weights / "musetalkV15" / "unet.pth", weights_only=True)
    for key in ("conv_in.weight", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"):
        assert torch.equal(models.unet.state_dict()[key], saved[key])
    # sd-vae-ft-mse: no scaling_factor in config.json -> 0.18215; legacy attention names converted.
    assert models.vae.config.scaling_factor == pytest.approx(0.18215)
    vae_saved = torch.load(weights / "sd-vae" / "diffusion_pytorch_model.bin", weights_only=True)
    assert torch.equal(models.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"],
                       vae_saved["decoder.mid_block.attentions.0.query.weight"])
    hf_saved = torch.load(weights / "whisper" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(models.whisper.state_dict()["blocks.3.attn.key.weight"],
                       hf_saved["model.encoder.layers.3.self_attn.k_proj.weight"])
    assert models.whisper.ln_post_on_last  # transformers' last hidden state is after layer_norm


def test_v1_layout_loads_openai_tiny(weights):
    models = load_models(weights, "v1", device="cpu")
    assert models.version == "v1" and not models.whisper.ln_post_on_last
    saved = torch.load(weights / "whisper" / "tiny.pt", weights_only=True)
    assert torch.equal(models.whisper.state_dict()["blocks.0.mlp.0.weight"],
                       saved["model_state_dict"]["encoder.blocks.0.mlp.0.weight"].float())
    saved_unet = torch.load(weights / "musetalk" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(models.unet.state_dict()["conv_out.weight"], saved_unet["conv_out.weight"])


def test_auto_version_prefers_v15(weights, tmp_path):
    assert detect_version(weights) == "v15"
    with pytest.raises(WeightsError, match=r"not found in .*musetalkV15.*tools\.download_models.*--model lite"):
        detect_version(tmp_path)


def test_inference_round_trip_shapes(weights):
    models = load_models(weights, "v15", device="cpu")
    crops = [np.full((256, 256, 3), value, np.uint8) for value in (40, 200)]
    latents = encode_for_unet(models.vae, crops)
    assert latents.shape == (2, 8, 32, 32)
    # masked half differs from the reference, which encodes the whole crop
    assert not torch.allclose(latents[:, :4], latents[:, 4:])
    audio = PositionalEncoding()(torch.zeros(2, 50, 384))
    with torch.inference_mode():
        out = models.unet(latents, 0, encoder_hidden_states=audio).sample
        faces = decode_to_bgr(models.vae, out)
    assert out.shape == (2, 4, 32, 32) and faces.shape == (2, 256, 256, 3) and faces.dtype == np.uint8


@pytest.mark.parametrize("relative", [
    "musetalkV15/unet.pth", "musetalkV15/musetalk.json", "sd-vae/config.json",
    "sd-vae/diffusion_pytorch_model.bin", "whisper/config.json", "whisper/pytorch_model.bin",
])
def test_missing_file_is_named(models_copy, relative):
    (models_copy / relative).unlink()
    with pytest.raises(WeightsError) as info:
        load_models(models_copy, "v15", device="cpu")
    message = str(info.value)
    folder, name = relative.split("/")
    assert folder in message and "tools.download_models" in message and "--model lite" in message
    if folder != "musetalkV15" and folder != "sd-vae":
        assert name in message


def test_missing_tiny_pt_is_named(models_copy):
    (models_copy / "whisper" / "tiny.pt").unlink()
    with pytest.raises(WeightsError, match=r"tiny\.pt.*tools\.download_models"):
        load_models(models_copy, "v1", device="cpu")


@pytest.mark.parametrize("relative", [
    "musetalkV15/unet.pth", "sd-vae/diffusion_pytorch_model.bin", "whisper/pytorch_model.bin", "whisper/tiny.pt",
])
def test_corrupt_file_is_named(models_copy, relative):
    path = models_copy / relative
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted download
    version = "v1" if relative.endswith("tiny.pt") else "v15"
    with pytest.raises(WeightsError) as info:
        load_models(models_copy, version, device="cpu")
    assert str(path.parent) in str(info.value) and "tools.download_models" in str(info.value)


def test_wrong_unet_checkpoint_is_named(models_copy):
    path = models_copy / "musetalkV15" / "unet.pth"
    state = torch.load(path, weights_only=True)
    del state["conv_out.weight"]
    state["something.else"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"unet\.pth does not match musetalk\.json.*conv_out\.weight"):
        load_models(models_copy, "v15", device="cpu")


def test_vae_with_missing_tensor_is_refused(models_copy):
    path = models_copy / "sd-vae" / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    del state["decoder.conv_out.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"sd-vae.*decoder\.conv_out\.bias"):
        load_models(models_copy, "v15", device="cpu")


def test_full_size_unet_on_meta_device(tmp_path):
    """The real musetalk.json: ~850 M parameters, and the loader asks for exactly diffusers' keys."""
    folder = tmp_path / "musetalkV15"
    folder.mkdir()
    (folder / "musetalk.json").write_text(json.dumps(OFFICIAL_UNET_CONFIG, indent=2, sort_keys=True) + "\n")
    assert len((folder / "musetalk.json").read_bytes()) == 748  # the size HF lists for the official file

    kwargs = {k: v for k, v in OFFICIAL_UNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        reference = UNet2DConditionModel(**kwargs)
    reference_keys = set(reference.state_dict())
    assert expected_unet_keys(OFFICIAL_UNET_CONFIG) == reference_keys

    # A full-size checkpoint without data (meta tensors) goes through the real loader.
    torch.save(reference.state_dict(), folder / "unet.pth")
    unet = load_unet(tmp_path, "v15")
    params = sum(p.numel() for p in unet.parameters())
    assert 845e6 < params < 855e6, params
    assert set(unet.state_dict()) == reference_keys
    assert unet.config.attention_head_dim == 8 and unet.config.in_channels == 8

    partial = reference.state_dict()
    partial.pop("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    torch.save(partial, folder / "unet.pth")
    with pytest.raises(WeightsError, match="attn2.to_k.weight"):
        load_unet(tmp_path, "v15")


def test_tiny_config_keeps_official_fields():
    assert set(TINY_UNET_CONFIG) == set(OFFICIAL_UNET_CONFIG)


def test_required_files_cover_what_the_loader_reads(weights):
    for version in ("v15", "v1"):
        for path in required_files(weights, version):
            assert path.is_file(), path


def test_hf_and_openai_layouts_give_the_same_encoder(tmp_path):
    """One set of encoder weights written in both layouts loads to identical features."""
    from tests.support.musetalk_fixtures import write_hf_whisper
    from musetalk.whisper import EncoderDims, WhisperEncoder

    state = write_hf_whisper(tmp_path / "hf", seed=7)
    dims = load_hf_encoder(tmp_path / "hf").dims
    assert dims.n_mlp == 64
    # Re-save the same tensors as an openai checkpoint (whose MLP is 4x wide: use a matching encoder).
    openai_dims = EncoderDims(**{**dims.__dict__, "n_mlp": 4 * dims.n_state})
    torch.manual_seed(0)
    encoder = WhisperEncoder(openai_dims, ln_post_on_last=False)
    torch.save({"dims": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                         "n_audio_layer": 4},
                "model_state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}},
               tmp_path / "tiny.pt")
    from musetalk.whisper import encoder_to_hf_keys
    (tmp_path / "hf2").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "hf2" / "config.json")
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    config["encoder_ffn_dim"] = 4 * dims.n_state
    (tmp_path / "hf2" / "config.json").write_text(json.dumps(config))
    torch.save(encoder_to_hf_keys(encoder.state_dict(), prefix="encoder."), tmp_path / "hf2" / "pytorch_model.bin")

    from_openai = load_openai_encoder(tmp_path / "tiny.pt", ln_post_on_last=False)
    from_hf = load_hf_encoder(tmp_path / "hf2", ln_post_on_last=False)
    mel = LogMel()(torch.randn(1, 320 * 20) * 0.1)
    with torch.inference_mode():
        a, b = from_openai(mel), from_hf(mel)
    assert a.shape == (1, 20, 5, 384)
    assert torch.equal(a, b)
    assert set(hf_to_encoder_keys(encoder_to_hf_keys(state))) == set(state)


def test_v15_last_layer_is_after_layer_norm(weights):
    pre = load_hf_encoder(weights / "whisper", ln_post_on_last=False)
    post = load_hf_encoder(weights / "whisper", ln_post_on_last=True)
    mel = LogMel()(torch.randn(1, 320 * 12) * 0.1)
    with torch.inference_mode():
        a, b = pre(mel), post(mel)
        normed = post.ln_post(a[:, :, 4])
    assert torch.equal(a[:, :, :4], b[:, :, :4])
    assert torch.allclose(b[:, :, 4], normed, atol=1e-5)


def test_mel_front_end():
    assert _hz_to_mel(1000.0) == pytest.approx(15.0)  # slaney: linear to 1 kHz at 200/3 Hz per mel
    assert _mel_to_hz(_hz_to_mel(4321.0)) == pytest.approx(4321.0)
    filters = mel_filters()
    assert filters.shape == (80, 201)
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > 190  # ascending centres up to 8 kHz
    # slaney normalisation: each triangle has unit area in Hz (height 2 / width)
    hz = np.linspace(0, 8000, 201)
    areas = np.trapezoid(filters[10:70], hz, axis=1)
    assert np.allclose(areas, 1.0, rtol=0.08)
    # a 1 kHz tone lights the filter centred at 1 kHz; 20 ms of audio is 2 mel frames
    tone = torch.from_numpy(np.sin(2 * np.pi * 1000 * np.arange(3200) / 16000).astype(np.float32))
    mel = LogMel()(tone[None])
    assert mel.shape == (1, 80, 20)
    centres = _mel_to_hz(np.linspace(0, _hz_to_mel(8000), 82))[1:-1]
    assert abs(int(mel[0, :, 10].argmax()) - int(np.argmin(np.abs(centres - 1000)))) <= 1
    assert float(mel.min()) == pytest.approx(float(mel.max()) - 2.0)  # log10 floored at max - 8, scaled by 1/4


@pytest.mark.parametrize("version", ["v15", "v1"])
def test_download_plan_writes_what_the_loader_reads(version, tmp_path):
    from tools import download_models
    planned = {item.path(tmp_path) for item in download_models.plan(version)}
    assert set(required_files(tmp_path, version)) <= planned


def test_hf_layout_names_are_those_of_transformers_whisper_encoder():
    """Written out by hand from transformers' WhisperEncoder naming (not derived from our mapping),
    so a wrong mapping cannot pass by round-tripping through its own inverse."""
    from musetalk.whisper import EncoderDims, WhisperEncoder, encoder_to_hf_keys

    encoder = WhisperEncoder(EncoderDims(n_ctx=8, n_state=8, n_head=2, n_layer=2, n_mlp=16), ln_post_on_last=True)
    expected = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "embed_positions.weight",
                "layer_norm.weight", "layer_norm.bias"}
    for i in range(2):
        for name in ("self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
                     "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.out_proj.weight",
                     "self_attn.out_proj.bias", "self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
                     "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                     "final_layer_norm.weight", "final_layer_norm.bias"):
            expected.add(f"layers.{i}.{name}")
    produced = set(encoder_to_hf_keys(encoder.state_dict(), prefix=""))
    assert produced == expected, (produced ^ expected)


def test_encoder_names_are_those_of_openai_whisper_audio_encoder():
    """Hand-written from openai-whisper's AudioEncoder (the `tiny.pt` layout, under `encoder.`)."""
    from musetalk.whisper import EncoderDims, WhisperEncoder

    encoder = WhisperEncoder(EncoderDims(n_ctx=8, n_state=8, n_head=2, n_layer=1, n_mlp=32), ln_post_on_last=False)
    expected = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "positional_embedding",
                "ln_post.weight", "ln_post.bias"}
    for name in ("attn.query.weight", "attn.query.bias", "attn.key.weight", "attn.value.weight",
                 "attn.value.bias", "attn.out.weight", "attn.out.bias", "attn_ln.weight", "attn_ln.bias",
                 "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp_ln.weight", "mlp_ln.bias"):
        expected.add(f"blocks.0.{name}")
    assert set(encoder.state_dict()) == expected, set(encoder.state_dict()) ^ expected
