"""The transfer Learner: pretrained body from a local file, normalisation added, frozen at gate 1."""

from __future__ import annotations

import pytest
import torch
from fastai.data.transforms import Normalize
from torchvision.models import resnet18

from lrgate.core.config import DataConfig, ModelConfig
from lrgate.training.data import build_dataloaders, list_images
from lrgate.training.efficientnet_lite0 import INPUT_MEAN, INPUT_STD, WeightsError
from lrgate.training.learner_state import detect_state
from lrgate.training.models import build_learner
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def dls_factory(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("img"))
    images = list_images(DataConfig(source="folder", path=root), root)
    return lambda: build_dataloaders(images, image_size=32, batch_size=8, valid_pct=0.25, seed=0, device="cpu")


def normalizers(dls) -> list[Normalize]:
    return [t for t in dls.after_batch if isinstance(t, Normalize)]


def test_lite0_learner_normalises_and_is_frozen_with_four_groups(dls_factory, tmp_path):
    learn = build_learner(dls_factory(), ModelConfig(), tmp_path)
    (norm,) = normalizers(learn.dls)
    assert torch.allclose(norm.mean.flatten().cpu(), torch.tensor(INPUT_MEAN))
    assert torch.allclose(norm.std.flatten().cpu(), torch.tensor(INPUT_STD))
    state = detect_state(learn)
    assert (state.state, state.frozen_groups, state.n_groups) == ("frozen", 3, 4)
    body = learn.model[0].net
    assert not body._conv_stem.weight.requires_grad and not body._conv_head.weight.requires_grad
    assert all(p.requires_grad for p in learn.model[1].parameters())
    learn.freeze_to(2)
    assert detect_state(learn).state == "freeze_to"  # enough groups for freeze_to to mean something


def test_lite0_learner_predicts_with_the_new_head(dls_factory, tmp_path):
    learn = build_learner(dls_factory(), ModelConfig(), tmp_path)
    x, _ = learn.dls.one_batch()
    assert learn.model.eval()(x).shape == (len(x), 2)


def test_torchvision_arch_loads_local_weights_into_its_body(dls_factory, tmp_path):
    source = resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    learn = build_learner(dls_factory(), ModelConfig(arch="resnet18", weights=tmp_path / "r18.pth"), tmp_path)
    assert torch.equal(learn.model[0][0].weight, source.conv1.weight)  # the stem came from the file
    assert len(normalizers(learn.dls)) == 1
    assert detect_state(learn).state == "frozen"


def test_weights_that_do_not_fit_the_arch_are_refused(dls_factory, tmp_path):
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        build_learner(dls_factory(), ModelConfig(arch="resnet18", weights=tmp_path / "bad.pth"), tmp_path)
    with pytest.raises(WeightsError):
        build_learner(dls_factory(), ModelConfig(weights=tmp_path / "bad.pth"), tmp_path)
