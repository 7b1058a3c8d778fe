"""Freeze-state detection on real fastai Learners: vision_learner, a custom splitter, a single group."""

from __future__ import annotations

import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.losses import CrossEntropyLossFlat
from fastai.vision.learner import vision_learner
from torchvision.models import resnet18

from lrgate.core.errors import LearnerStateError
from lrgate.training.learner_state import detect_state
from tests.tiny_learners import single_group_learner, transfer_learner


@pytest.fixture(scope="module")
def resnet_learner(tmp_path_factory):
    items = [(torch.randn(3, 32, 32), torch.tensor(i % 2)) for i in range(16)]
    dls = DataLoaders(DataLoader(items, bs=8), DataLoader(items, bs=8))
    # pretrained=False: no download; vision_learner then leaves the model unfrozen.
    return vision_learner(
        dls,
        resnet18,
        pretrained=False,
        n_out=2,
        loss_func=CrossEntropyLossFlat(),
        path=tmp_path_factory.mktemp("resnet"),
    )


def test_vision_learner_frozen_despite_trainable_batchnorm(resnet_learner):
    learn = resnet_learner
    learn.freeze()
    # The trap: BatchNorm in the frozen body still trains, so counting requires_grad says "partly unfrozen".
    body_params = list(learn.model[0].parameters())
    assert any(p.requires_grad for p in body_params) and not all(p.requires_grad for p in body_params)
    st = detect_state(learn)
    assert (st.state, st.frozen_groups, st.n_groups) == ("frozen", 2, 3)


def test_vision_learner_freeze_to_and_unfreeze(resnet_learner):
    learn = resnet_learner
    learn.freeze_to(1)
    assert detect_state(learn).state == "freeze_to"
    learn.unfreeze()
    assert detect_state(learn).state == "unfrozen"


def test_custom_splitter_learner(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    assert detect_state(learn).state == "frozen"
    learn.freeze_to(1)
    st = detect_state(learn)
    assert (st.state, st.frozen_groups) == ("freeze_to", 1)


def test_optimizer_is_created_when_missing(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    learn.opt = None  # as a fresh Learner that never fitted nor froze
    st = detect_state(learn)
    assert learn.opt is not None
    assert (st.state, st.n_groups) == ("unfrozen", 3)


def test_single_group_model_reads_unfrozen_with_a_warning(tmp_path):
    learn = single_group_learner(path=tmp_path)
    learn.freeze()  # a no-op on one group: fastai freezes nothing
    st = detect_state(learn)
    assert (st.state, st.n_groups) == ("unfrozen", 1)
    assert "single parameter group" in st.warnings[0]


def test_every_group_frozen_is_refused(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with pytest.warns(UserWarning):
        learn.freeze_to(3)
    with pytest.raises(LearnerStateError, match="all 3 parameter groups are frozen"):
        detect_state(learn)
