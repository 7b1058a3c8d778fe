"""Real, tiny fastai Learners for tests and for recording the example curves (seconds on a CPU).

The transfer task is real: a small CNN body is pretrained on sklearn's digits 0-4, then a new head is
fitted to digits 5-9, frozen first and unfrozen after, as a fine-tune would be.
"""

from __future__ import annotations

import fastai.callback.progress  # noqa: F401  (Learner.no_bar and the progress bar)
import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam
from fastai.torch_core import params, set_seed
from sklearn.datasets import load_digits
from torch import nn

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)


def digits_dls(classes: tuple[int, ...], bs: int = 64, seed: int = 0) -> DataLoaders:
    """8x8 digit images of ``classes`` (labels renumbered 0..k-1), 80/20 train/valid split."""
    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, classes)
    x = (x[keep] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = np.searchsorted(np.array(classes), y[keep])
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))

    def items(ids: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.from_numpy(x[i]), torch.tensor(int(y[i]))) for i in ids]

    train = DataLoader(items(order[:cut]), bs=bs, shuffle=True, drop_last=True)
    return DataLoaders(train, DataLoader(items(order[cut:]), bs=2 * bs))


def tiny_cnn(n_out: int) -> nn.Sequential:
    """body (two conv blocks with BatchNorm) + head; the BatchNorm is what makes freezing subtle."""
    body = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return nn.Sequential(body, nn.Linear(32, n_out))


def three_groups(model: nn.Sequential) -> list:
    """A custom splitter: first conv block, second conv block, head."""
    return [params(model[0][:3]), params(model[0][3:]), params(model[1])]


def pretrained_body(seed: int = 0) -> dict:
    """The body's weights after a short training on digits 0-4 (the 'pretrained' body)."""
    set_seed(seed, reproducible=True)
    learn = Learner(
        digits_dls(PRETRAIN_CLASSES, seed=seed),
        tiny_cnn(len(PRETRAIN_CLASSES)),
        loss_func=CrossEntropyLossFlat(),
        splitter=three_groups,
    )
    with learn.no_logging(), learn.no_bar():
        learn.fit_one_cycle(3, 1e-2)
    return {k: v.clone() for k, v in learn.model[0].state_dict().items()}


def transfer_learner(body: dict, *, bs: int = 64, opt: str = "adam", seed: int = 0, path=".") -> Learner:
    """A frozen Learner on digits 5-9 with the pretrained body and a fresh head (3 parameter groups)."""
    set_seed(seed, reproducible=True)
    model = tiny_cnn(len(TRANSFER_CLASSES))
    model[0].load_state_dict(body)
    learn = Learner(
        digits_dls(TRANSFER_CLASSES, bs=bs, seed=seed),
        model,
        loss_func=CrossEntropyLossFlat(),
        opt_func=Adam if opt == "adam" else SGD,
        splitter=three_groups,
        metrics=accuracy,
        path=path,
    )
    learn.freeze()
    return learn


def single_group_learner(path=".") -> Learner:
    """A Learner with fastai's default splitter: one parameter group, which cannot be frozen."""
    set_seed(0, reproducible=True)
    return Learner(
        digits_dls(TRANSFER_CLASSES),
        tiny_cnn(len(TRANSFER_CLASSES)),
        loss_func=CrossEntropyLossFlat(),
        path=path,
    )
