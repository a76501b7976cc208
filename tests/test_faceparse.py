"""BiSeNet face parsing: the official checkpoint layout, the loader's checks, masks drawn from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avatars.faceparse import BiSeNet, FaceParseError, load_face_parser, parser_weights
from avatars.facemask import SKIN
from tests.support.musetalk_fixtures import TINY_PARSER_WIDTH, write_tiny_face_parser

# Written out from face-parsing.PyTorch's module names (the layout of 79999_iter.pth), not derived from our model.
OFFICIAL_KEYS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.1.conv2.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer3.0.downsample.1.running_mean": (256,),
    "cp.resnet.layer4.1.bn2.bias": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.weight": (128,),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.running_var": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}


def test_full_size_network_has_the_published_layout():
    with torch.device("meta"):
        state = BiSeNet().state_dict()
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert "cp.resnet.layer1.0.downsample.0.weight" not in state  # 64 -> 64, stride 1: no projection
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked")))
    assert 13.2e6 < params < 13.4e6  # 53.3 MB of fp32, the published file's size


def test_tiny_checkpoint_loads_and_labels_a_crop(tmp_path):
    write_tiny_face_parser(tmp_path)
    parser = load_face_parser(tmp_path)
    assert parser.net.cp.resnet.conv1.out_channels == TINY_PARSER_WIDTH
    saved = torch.load(parser_weights(tmp_path), weights_only=True)
    assert torch.equal(parser.net.state_dict()["ffm.conv2.weight"], saved["ffm.conv2.weight"])
    labels = parser.parse(np.random.default_rng(0).integers(0, 255, (150, 130, 3), dtype=np.uint8))
    assert labels.shape == (512, 512) and labels.dtype == np.uint8 and labels.max() < 19


def test_a_known_parser_drives_the_mask(tmp_path, landmarker):
    """A parser that calls everything skin: the mask is the face box below the upper boundary, feathered;
    the landmark mask (the fallback) is narrower. The avatar records which one it used."""
    from avatars.prepare import PrepareOptions, build_avatar, default_photo

    write_tiny_face_parser(tmp_path / "models", label=SKIN)
    options = PrepareOptions(loop_seconds=0.04, models_dir=tmp_path / "models", version="v1")
    report = build_avatar(tmp_path / "parsed", options, image=default_photo(), source="astronaut",
                          landmarker=landmarker)
    fallback = build_avatar(tmp_path / "landmarks", PrepareOptions(loop_seconds=0.04, models_dir=tmp_path / "none",
                                                                   version="v1"),
                            image=default_photo(), source="astronaut", landmarker=landmarker)
    from avatars.store import load_avatar

    parsed, drawn = load_avatar(report.folder), load_avatar(fallback.folder)
    meta = json.loads((report.folder / "avatar.json").read_text())
    assert (meta["face_parsing"], meta["parsing_mode"], meta["musetalk_version"]) == ("bisenet", "raw", "v1")
    assert json.loads((fallback.folder / "avatar.json").read_text())["face_parsing"] == "landmarks"
    mask, crop = parsed.masks[0], parsed.crop_boxes[0]
    x1, y1, x2, y2 = parsed.face_boxes[0] - np.r_[crop[:2], crop[:2]]
    middle = (crop[3] - crop[1]) // 2
    assert mask[middle + 20: y2 - 12, x1 + 12: x2 - 12].min() == 255  # the whole lower box
    corner = (y2 - 12, x1 + 12)  # below the rounded jaw line: outside the landmark mask
    assert mask[corner] == 255 and drawn.masks[0][corner] < 128, drawn.masks[0][corner]


def test_bad_checkpoints_say_what_to_do(tmp_path):
    assert load_face_parser(tmp_path) is None  # absent: landmark masks
    path = write_tiny_face_parser(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceParseError, match=r"79999_iter\.pth.*tools\.download_models"):
        load_face_parser(tmp_path)
    state = BiSeNet(TINY_PARSER_WIDTH).state_dict()
    del state["ffm.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(FaceParseError, match=r"does not match BiSeNet.*ffm\.conv1\.weight"):
        load_face_parser(tmp_path)


def test_download_plan_fetches_the_face_parsing_files(tmp_path):
    from tools import download_models
    from avatars.faceparse import BACKBONE_WEIGHTS, PARSER_DIR

    for version in ("v15", "v1"):
        planned = {item.path(tmp_path) for item in download_models.plan(version)}
        assert parser_weights(tmp_path) in planned and tmp_path / PARSER_DIR / BACKBONE_WEIGHTS in planned
