"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch), the network MuseTalk's masks come from.

    models/face-parse-bisent/79999_iter.pth        the trained network (CelebAMask-HQ, 19 labels)
    models/face-parse-bisent/resnet18-5c106cde.pth  ImageNet ResNet-18 (see below)

The model below is our own definition that loads the published state dict
as is: the same module names (`cp.resnet.*`, `cp.arm16`, `cp.arm32`,
`cp.conv_head16/32`, `cp.conv_avg`, `ffm`, `conv_out`, `conv_out16/32`) and
the same inference path (ResNet-18 features at 1/8, 1/16, 1/32; attention
refinement; feature fusion; a 19-class head upsampled to the input). The
widths are read from the checkpoint's tensor shapes (the published one is
64 wide at the stem), so a narrow checkpoint in the same layout loads too.
The official code reads resnet18-5c106cde.pth only to initialise the
backbone before 79999_iter.pth overwrites every tensor of it, so inference
needs 79999_iter.pth alone; download_models.py fetches both, like MuseTalk.

Input: the expanded crop as RGB, resized to 512x512, ImageNet-normalised;
output: the argmax label map.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatars.facemask import PARSE_SIZE

logger = logging.getLogger(__name__)

PARSER_DIR = "face-parse-bisent"
PARSER_WEIGHTS = "79999_iter.pth"
BACKBONE_WEIGHTS = "resnet18-5c106cde.pth"
N_CLASSES = 19
FULL_STEM = 64  # channels of ResNet-18's stem in the published checkpoint
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class FaceParseError(Exception):
    """The face-parsing weights are unusable; the message names the file and the fix."""


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """The backbone: features at strides 8, 16 and 32."""

    def __init__(self, width: int):
        super().__init__()
        w = [width, width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[1], 1), BasicBlock(w[1], w[1], 1))
        self.layer2 = nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2], 1))
        self.layer3 = nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3], 1))
        self.layer4 = nn.Sequential(BasicBlock(w[3], w[4], 2), BasicBlock(w[4], w[4], 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        head = 2 * width  # 128 in the published network
        self.resnet = ResNet18(width)
        self.arm16 = AttentionRefinement(4 * width, head)
        self.arm32 = AttentionRefinement(8 * width, head)
        self.conv_head32 = ConvBNReLU(head, head)
        self.conv_head16 = ConvBNReLU(head, head)
        self.conv_avg = ConvBNReLU(8 * width, head, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        up32 = F.interpolate(self.arm32(feat32) + context, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * attention + feat


class SegmentationHead(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parsing network; `forward` returns the full-resolution logits of the main head.

    conv_out16/conv_out32 are the training-time auxiliary heads: they are part
    of the published state dict, so they are defined, but inference skips them.
    """

    def __init__(self, width: int = FULL_STEM, classes: int = N_CLASSES):
        super().__init__()
        self.cp = ContextPath(width)
        self.ffm = FeatureFusion(4 * width, 4 * width)
        self.conv_out = SegmentationHead(4 * width, 4 * width, classes)
        self.conv_out16 = SegmentationHead(2 * width, width, classes)
        self.conv_out32 = SegmentationHead(2 * width, width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, context = self.cp(x)
        logits = self.conv_out(self.ffm(spatial, context))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser:
    """Labels expanded face crops with BiSeNet (CPU or GPU), one 512x512 label map per crop."""

    def __init__(self, net: BiSeNet, device: torch.device):
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = device
        self._mean = torch.tensor(MEAN, device=device)[:, None, None]
        self._std = torch.tensor(STD, device=device)[:, None, None]

    @torch.inference_mode()
    def parse(self, crop_bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(cv2.resize(crop_bgr, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR),
                           cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).contiguous().float() / 255.0
        logits = self.net(((x - self._mean) / self._std)[None])
        return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


def parser_weights(models_dir: Path) -> Path:
    return models_dir / PARSER_DIR / PARSER_WEIGHTS


def load_face_parser(models_dir: Path, device: str | torch.device = "cpu") -> FaceParser | None:
    """BiSeNet from models/face-parse-bisent/79999_iter.pth; None when the file is absent."""
    path = parser_weights(models_dir)
    if not path.is_file():
        return None
    hint = "run `python -m tools.download_models` again, or delete the file to use landmark masks"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise several types
        raise FaceParseError(f"cannot read {path} ({type(exc).__name__}): {hint}") from None
    if not isinstance(state, dict) or "cp.resnet.conv1.weight" not in state:
        raise FaceParseError(f"{path} is not a BiSeNet face-parsing state dict: {hint}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    width = int(state["cp.resnet.conv1.weight"].shape[0])
    classes = int(state["conv_out.conv_out.weight"].shape[0]) if "conv_out.conv_out.weight" in state else 0
    net = BiSeNet(width, classes or N_CLASSES)
    own = net.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # training bookkeeping, absent in old files
    missing, unexpected = sorted(set(own) - set(state) - optional), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong or classes != N_CLASSES:
        raise FaceParseError(f"{path} does not match BiSeNet (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"wrong shapes {wrong[:3]}, {classes} classes): {hint}")
    net.load_state_dict(state, strict=False)
    logger.info("face parsing: BiSeNet from %s (stem width %d)", path, width)
    return FaceParser(net, torch.device(device))
