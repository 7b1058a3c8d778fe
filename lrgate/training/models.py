"""Build the transfer Learner: a pretrained body from a local weights file, a fresh head, the input
normalisation the body was trained with, and a splitter with enough groups for ``freeze_to`` to mean something.

Two routes. The packaged EfficientNet-Lite0 does not go through ``vision_learner`` (fastai's ``create_body``
cannot cut it and adds no normalisation for archs outside its ``model_meta``): its feature extractor is wrapped
here, with four parameter groups (stem and early blocks, middle blocks, late blocks and head conv, new head).
torchvision archs go through ``vision_learner`` with ``pretrained=False`` (so nothing is downloaded); the local
weights are then loaded into its body, and ImageNet normalisation is added as fastai would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fastai.data.core import DataLoaders
from fastai.data.transforms import Normalize
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import params
from fastai.vision.core import imagenet_stats
from fastai.vision.learner import create_body, create_head, model_meta, vision_learner
from torch import nn

from lrgate.core.config import EFFICIENTNET_LITE0, ModelConfig
from lrgate.training.efficientnet_lite0 import (
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite0,
    WeightsError,
    load_efficientnet_lite0,
)

LITE0_FEATURES = 1280


class Lite0Body(nn.Module):
    """EfficientNet-Lite0 without its classifier: images in, a 1280-channel feature map out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        del self.net._fc  # the ImageNet classifier: replaced by a fresh head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def lite0_splitter(model: nn.Sequential) -> list:
    """Four parameter groups: stem + blocks 0-3, blocks 4-10, blocks 11-15 + head conv, the new head."""
    net = model[0].net
    return [
        params(nn.ModuleList([net._conv_stem, net._bn0, *net._blocks[:4]])),
        params(nn.ModuleList(net._blocks[4:11])),
        params(nn.ModuleList([*net._blocks[11:], net._conv_head, net._bn1])),
        params(model[1]),
    ]


def add_normalize(dls: DataLoaders, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Normalise batches as the body's pretraining did (what ``vision_learner`` does for archs it knows)."""
    dls.add_tfms([Normalize.from_stats(mean, std)], "after_batch")


def lite0_model(n_out: int, pretrained: bool = True, weights: Path | None = None) -> nn.Sequential:
    """EfficientNet-Lite0 body (ImageNet weights from ``weights`` or the packaged file) + a fresh fastai head.

    Inputs must be normalised with :data:`INPUT_MEAN` / :data:`INPUT_STD`; split it with :func:`lite0_splitter`.
    """
    net = load_efficientnet_lite0(weights) if pretrained else EfficientNetLite0()
    # TF's BatchNorm momentum (0.01 in PyTorch terms) suits a long ImageNet run; a short fine-tune needs the
    # running statistics to follow the new images, or evaluation sees ImageNet's (PyTorch's default, 0.1).
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return nn.Sequential(Lite0Body(net), create_head(LITE0_FEATURES, n_out))


def _lite0_learner(dls: DataLoaders, cfg: ModelConfig, path: Path) -> Learner:
    model = lite0_model(dls.c, cfg.pretrained, cfg.weights)
    if cfg.pretrained:
        add_normalize(dls, INPUT_MEAN, INPUT_STD)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=lite0_splitter, metrics=accuracy, path=path)
    if cfg.pretrained:
        learn.freeze()
    return learn


def _torchvision_learner(dls: DataLoaders, cfg: ModelConfig, path: Path) -> Learner:
    import torchvision.models

    arch = torchvision.models.get_model_builder(cfg.arch)
    learn = vision_learner(
        dls, arch, pretrained=False, normalize=False, loss_func=CrossEntropyLossFlat(), metrics=accuracy, path=path
    )
    if cfg.pretrained:
        source = arch(weights=None)
        try:
            source.load_state_dict(torch.load(cfg.weights, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as e:
            raise WeightsError(f"{cfg.weights}: not a {cfg.arch} state_dict ({str(e).splitlines()[0]})") from None
        meta = model_meta.get(arch, {})
        learn.model[0].load_state_dict(create_body(source, cut=meta.get("cut")).state_dict())
        mean, std = meta.get("stats", imagenet_stats)
        add_normalize(dls, mean, std)
        learn.freeze()
    return learn


def build_learner(dls: DataLoaders, cfg: ModelConfig, path: Path) -> Learner:
    """A Learner for ``dls`` with the body ``cfg`` names; frozen when the body is pretrained.

    Raises
    ------
    WeightsError
        The weights file is missing or does not fit the arch.
    """
    build = _lite0_learner if cfg.arch == EFFICIENTNET_LITE0 else _torchvision_learner
    return build(dls, cfg, Path(path))
