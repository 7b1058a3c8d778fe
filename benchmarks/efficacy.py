"""Efficacy benchmark, training part: real ``lr_find`` curves and an oracle lr grid for each split's tasks.

    python -m benchmarks.efficacy record [--max-minutes 100] [--tasks NAME ...]   # resumable, in chunks
    python -m benchmarks.efficacy race [--split third] [--budget 1] [--max-minutes 30]  # resumable, in chunks
    python -m benchmarks.efficacy repick --trials-by 0.7.0   # a changed pick, from the recorded trials
    python -m benchmarks.efficacy score [--split held_out|fresh|third|...|fourteenth|tuning|all] [--plot FILE]

For each task (data set x pretrained body x optimiser x batch size) and seed it records:

1. the frozen range test (fastai ``lr_find``, the pipeline's defaults: 1e-7 to 10, 100 iterations, stop_div;
   again without stop_div when it stopped too early to read, as the pipeline does);
2. the frozen grid: ``fit_one_cycle(epochs, lr)`` from the same start for every lr of ``FROZEN_GRID``;
3. one frozen checkpoint per task and seed, trained at the task's best frozen grid lr (mean over seeds);
4. from that checkpoint, ``unfreeze()`` and the unfrozen range test;
5. the unfrozen grid: ``fit_one_cycle(epochs, slice(hi / 10, hi))`` for every ``hi`` of ``UNFROZEN_GRID``.

``race`` runs lrgate's race (:mod:`lrgate.training.race`) on each recorded curve, from the same start as that
curve's grid, at a budget in trainings of the stage, and records its winner and cost in ``races.csv`` and its
whole record (every trial's lr, length, loss and metric, by rung) in ``race_trials.jsonl``; scoring looks the winner
up on the grid like any other method's lr. An unfrozen race spans the lrs around the frozen race's winner at the
same budget (``head_lr``, as the pipeline's gate 2 races around gate 1's lr), while its start, like the unfrozen
grid's, is the checkpoint trained at the task's best frozen grid lr: in the pipeline the head trains at the lr it
races around, here at the oracle's (the same lr on 89 of 159 curves at budget 1, half a decade apart on 68, a
decade on 2).

Every result is appended to the data files in ``benchmarks/efficacy/`` as soon as it exists (atomic rewrites), and
a rerun skips what is there: stop it at any time, or give it ``--max-minutes`` and run it again for the next chunk.
Scoring (:mod:`benchmarks.efficacy_scoring`) reads only those files. Frozen checkpoints live in
``runs/efficacy-work/`` (rebuilt when missing). Seeds fix the head's initialisation and the batch order; each
task's data is fixed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle, Learner.lr_find)
import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam
from fastai.torch_core import set_seed
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits, load_sample_images

import lrgate
from benchmarks import efficacy_scoring as scoring
from lrgate.core.curve_file import write_curve_csv
from lrgate.core.errors import CurveError, ShortCurveError
from lrgate.core.outputs import write_text
from lrgate.core.race_plan import Trial, race_winner, usable_head_lr
from lrgate.core.suggest import DEFAULT_NOISE, clean_curve, suggest
from lrgate.training.efficientnet_lite0 import INPUT_MEAN, INPUT_STD
from lrgate.training.models import lite0_model, lite0_splitter
from lrgate.training.race import race_suggestion, stage_length
from lrgate.training.range_test import run_range_test
from tests.tiny_learners import pretrained_body, three_groups, tiny_cnn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "efficacy"
WORK = ROOT / "runs" / "efficacy-work"
FROZEN_GRID = [float(10**e) for e in np.arange(-5, 1.01, 0.5)]  # 1e-5 .. 10, half-decade steps
UNFROZEN_GRID = [float(10**e) for e in np.arange(-6, 1.01, 0.5)]  # slice(hi / 10, hi) for hi in 1e-6 .. 10
N_VALID = 200
GRID_FIELDS = ("task", "seed", "stage", "lr", "accuracy", "valid_loss", "train_loss", "seconds")
RANGE_FIELDS = ("task", "seed", "stage", "points", "seconds", "checkpoint_lr")
RACE_FIELDS = (
    "lrgate",
    "task",
    "seed",
    "stage",
    "budget",
    "score",
    "winner",
    "candidates",
    "iterations",
    "stage_iterations",
    "trainings",
    "seconds",
)


@dataclass(frozen=True)
class Task:
    data: str  # digits | shapes | photos | textures | letters
    body: str  # cnn (tiny CNN pretrained on digits 0-4) | lite0 (EfficientNet-Lite0, ImageNet)
    opt: str  # adam | sgd (SGD with momentum 0.9, fastai's default)
    bs: int
    epochs: int = 2  # per stage; short fits make the lr matter, as in a real fine-tune's first epochs
    n_train: int = 400
    n_valid: int = N_VALID


TASKS = {
    # the tiny CNN trains in a fraction of a second: more images and epochs for it
    "digits-cnn-adam-bs64": Task("digits", "cnn", "adam", 64, epochs=5, n_train=700),
    "digits-cnn-sgd-bs8": Task("digits", "cnn", "sgd", 8, epochs=3, n_train=700),
    "shapes-lite0-adam-bs8": Task("shapes", "lite0", "adam", 8),
    "shapes-lite0-sgd-bs64": Task("shapes", "lite0", "sgd", 64),
    "photos-lite0-sgd-bs8": Task("photos", "lite0", "sgd", 8),
    "shapes-cnn-adam-bs64": Task("shapes", "cnn", "adam", 64, epochs=8, n_train=1000),
    # fresh tasks (split-fresh.json): added, and their split fixed, after the default was chosen
    "textures-lite0-adam-bs64": Task("textures", "lite0", "adam", 64),
    "textures-cnn-sgd-bs64": Task("textures", "cnn", "sgd", 64, epochs=8, n_train=1000),
    "photos-cnn-adam-bs8": Task("photos", "cnn", "adam", 8, epochs=3, n_train=700),
    # third split (split-third.json): fixed before the race's parameters were chosen. Long stages (1,500 iterations
    # and more next to a 100-iteration range test), so a race's compressed trials are really compressed, and one
    # task at two lengths (1 and 5 epochs) to see whether a method follows the best lr as training gets longer.
    "letters-cnn-sgd-bs32": Task("letters", "cnn", "sgd", 32, epochs=2, n_train=24_000, n_valid=1_000),
    "letters-cnn-adam-bs64-e1": Task("letters", "cnn", "adam", 64, epochs=1, n_train=20_000, n_valid=1_000),
    "letters-cnn-adam-bs64-e5": Task("letters", "cnn", "adam", 64, epochs=5, n_train=20_000, n_valid=1_000),
    "textures-cnn-adam-bs16": Task("textures", "cnn", "adam", 16, epochs=3, n_train=700),
    # fourth split (split-fourth.json): fixed before any of it was recorded, with 0.4.0's race unchanged; larger
    # validation sets (1,000 images: one image is 0.1 point), new combinations of data, body, optimiser and length
    "digits-cnn-adam-bs16-e3": Task("digits", "cnn", "adam", 16, epochs=3, n_train=500, n_valid=396),  # all 896
    "shapes-cnn-sgd-bs16-e4": Task("shapes", "cnn", "sgd", 16, epochs=4, n_train=1_000, n_valid=1_000),
    "photos-cnn-sgd-bs32-e4": Task("photos", "cnn", "sgd", 32, epochs=4, n_train=1_000, n_valid=1_000),
    "letters-cnn-adam-bs32-e2": Task("letters", "cnn", "adam", 32, epochs=2, n_train=8_000, n_valid=1_000),
    "textures-lite0-sgd-bs32": Task("textures", "lite0", "sgd", 32, epochs=2, n_train=400, n_valid=1_000),
    # fifth split (split-fifth.json): fixed before it was recorded and before any change to 0.4.0's race was chosen
    "shapes-cnn-adam-bs32-e3": Task("shapes", "cnn", "adam", 32, epochs=3, n_train=3_000, n_valid=1_000),
    "textures-cnn-sgd-bs16-e2": Task("textures", "cnn", "sgd", 16, epochs=2, n_train=2_000, n_valid=1_000),
    "letters-cnn-sgd-bs64-e1": Task("letters", "cnn", "sgd", 64, epochs=1, n_train=12_000, n_valid=1_000),
    "letters-cnn-sgd-bs64-e4": Task("letters", "cnn", "sgd", 64, epochs=4, n_train=12_000, n_valid=1_000),
    "photos-lite0-adam-bs16": Task("photos", "lite0", "adam", 16, epochs=2, n_train=400, n_valid=1_000),
    # sixth split (split-sixth.json): fixed after 0.6.0 was judged on the fifth, before any change after 0.6.0 was
    # chosen; it judges the next one
    "digits-cnn-sgd-bs32-e4": Task("digits", "cnn", "sgd", 32, epochs=4, n_train=500, n_valid=396),  # all 896
    "shapes-lite0-adam-bs32": Task("shapes", "lite0", "adam", 32, epochs=3, n_train=600, n_valid=1_000),
    "textures-cnn-adam-bs64-e6": Task("textures", "cnn", "adam", 64, epochs=6, n_train=3_000, n_valid=1_000),
    "letters-cnn-adam-bs16-e1": Task("letters", "cnn", "adam", 16, epochs=1, n_train=8_000, n_valid=1_000),
    "photos-cnn-adam-bs32-e2": Task("photos", "cnn", "adam", 32, epochs=2, n_train=1_000, n_valid=1_000),
    # seventh split (split-seventh.json): fixed after 0.7.0 was judged on the sixth, before any change after 0.7.0
    # was chosen; it judges the next one
    "photos-lite0-sgd-bs32": Task("photos", "lite0", "sgd", 32, epochs=3, n_train=400, n_valid=1_000),
    "letters-cnn-sgd-bs16-e2": Task("letters", "cnn", "sgd", 16, epochs=2, n_train=6_000, n_valid=1_000),
    "textures-cnn-sgd-bs32-e4": Task("textures", "cnn", "sgd", 32, epochs=4, n_train=2_000, n_valid=1_000),
    "digits-cnn-adam-bs32-e6": Task("digits", "cnn", "adam", 32, epochs=6, n_train=500, n_valid=396),  # all 896
    "shapes-cnn-sgd-bs64-e10": Task("shapes", "cnn", "sgd", 64, epochs=10, n_train=3_000, n_valid=1_000),
    # eighth split (split-eighth.json): fixed after 0.8.0's change was committed, before any later change was
    # chosen; it judges the next one
    "shapes-cnn-adam-bs16-e2": Task("shapes", "cnn", "adam", 16, epochs=2, n_train=2_000, n_valid=1_000),
    "photos-cnn-sgd-bs16-e3": Task("photos", "cnn", "sgd", 16, epochs=3, n_train=1_000, n_valid=1_000),
    "textures-lite0-adam-bs32": Task("textures", "lite0", "adam", 32, epochs=2, n_train=400, n_valid=1_000),
    "letters-cnn-sgd-bs128-e3": Task("letters", "cnn", "sgd", 128, epochs=3, n_train=24_000, n_valid=1_000),
    "digits-cnn-sgd-bs16-e5": Task("digits", "cnn", "sgd", 16, epochs=5, n_train=500, n_valid=396),  # all 896
    # ninth split (split-ninth.json): fixed after 0.9.0 was judged on the eighth, before any change after 0.9.0 was
    # chosen; it judges the next one
    "digits-cnn-adam-bs8-e4": Task("digits", "cnn", "adam", 8, epochs=4, n_train=500, n_valid=396),  # all 896
    "shapes-lite0-sgd-bs16": Task("shapes", "lite0", "sgd", 16, epochs=2, n_train=600, n_valid=1_000),
    "photos-cnn-adam-bs64-e6": Task("photos", "cnn", "adam", 64, epochs=6, n_train=2_000, n_valid=1_000),
    "letters-cnn-adam-bs128-e4": Task("letters", "cnn", "adam", 128, epochs=4, n_train=24_000, n_valid=1_000),
    "textures-cnn-adam-bs8-e2": Task("textures", "cnn", "adam", 8, epochs=2, n_train=1_000, n_valid=1_000),
    # tenth split (split-tenth.json): fixed after 0.10.0 was judged on the ninth, before any change after 0.10.0 was
    # chosen; it judges the next one
    "digits-cnn-sgd-bs64-e8": Task("digits", "cnn", "sgd", 64, epochs=8, n_train=500, n_valid=396),  # all 896
    "shapes-cnn-sgd-bs32-e3": Task("shapes", "cnn", "sgd", 32, epochs=3, n_train=2_000, n_valid=1_000),
    "textures-lite0-sgd-bs16": Task("textures", "lite0", "sgd", 16, epochs=2, n_train=400, n_valid=1_000),
    "letters-cnn-adam-bs32-e1": Task("letters", "cnn", "adam", 32, epochs=1, n_train=12_000, n_valid=1_000),
    "photos-cnn-sgd-bs8-e2": Task("photos", "cnn", "sgd", 8, epochs=2, n_train=700, n_valid=1_000),
    # eleventh split (split-eleventh.json): fixed after 0.10.0 was judged and the tenth recorded, before any change
    # after 0.10.0 was chosen; it judges the change after the one the tenth judges
    "digits-cnn-adam-bs32-e2": Task("digits", "cnn", "adam", 32, epochs=2, n_train=500, n_valid=396),  # all 896
    "shapes-lite0-adam-bs64": Task("shapes", "lite0", "adam", 64, epochs=3, n_train=600, n_valid=1_000),
    "photos-lite0-adam-bs8": Task("photos", "lite0", "adam", 8, epochs=1, n_train=400, n_valid=1_000),
    "letters-cnn-sgd-bs8-e1": Task("letters", "cnn", "sgd", 8, epochs=1, n_train=12_000, n_valid=1_000),
    "textures-cnn-sgd-bs8-e3": Task("textures", "cnn", "sgd", 8, epochs=3, n_train=1_000, n_valid=1_000),
    # twelfth split (split-twelfth.json): fixed after 0.11.0 was judged on the tenth and the eleventh recorded, before
    # any change after 0.11.0 was chosen; it judges the change after the one the eleventh judges
    "digits-cnn-sgd-bs16-e2": Task("digits", "cnn", "sgd", 16, epochs=2, n_train=500, n_valid=396),  # all 896
    "shapes-cnn-adam-bs8-e2": Task("shapes", "cnn", "adam", 8, epochs=2, n_train=1_000, n_valid=1_000),
    "photos-lite0-sgd-bs16": Task("photos", "lite0", "sgd", 16, epochs=2, n_train=400, n_valid=1_000),
    "textures-lite0-adam-bs16": Task("textures", "lite0", "adam", 16, epochs=2, n_train=400, n_valid=1_000),
    "letters-cnn-adam-bs8-e1": Task("letters", "cnn", "adam", 8, epochs=1, n_train=12_000, n_valid=1_000),
    # thirteenth split (split-thirteenth.json): fixed after 0.13.0's change was chosen, before the twelfth was raced
    # with it and before any change after 0.13.0 was chosen; it judges the change after 0.13.0
    "digits-cnn-adam-bs64-e3": Task("digits", "cnn", "adam", 64, epochs=3, n_train=500, n_valid=396),  # all 896
    "shapes-lite0-sgd-bs32": Task("shapes", "lite0", "sgd", 32, epochs=2, n_train=600, n_valid=1_000),
    "photos-cnn-adam-bs16-e4": Task("photos", "cnn", "adam", 16, epochs=4, n_train=1_000, n_valid=1_000),
    "textures-cnn-adam-bs32-e3": Task("textures", "cnn", "adam", 32, epochs=3, n_train=2_000, n_valid=1_000),
    "letters-cnn-sgd-bs16-e1": Task("letters", "cnn", "sgd", 16, epochs=1, n_train=24_000, n_valid=1_000),
    # fourteenth split (split-fourteenth.json): fixed after no change after 0.13.0 was found worth making, before the
    # thirteenth's races were read and before any change after 0.13.0 was chosen; it judges the change after 0.13.0
    "digits-cnn-sgd-bs32-e2": Task("digits", "cnn", "sgd", 32, epochs=2, n_train=500, n_valid=396),  # all 896
    "shapes-cnn-sgd-bs8-e2": Task("shapes", "cnn", "sgd", 8, epochs=2, n_train=1_000, n_valid=1_000),
    "photos-lite0-adam-bs32": Task("photos", "lite0", "adam", 32, epochs=2, n_train=400, n_valid=1_000),
    "textures-lite0-sgd-bs8": Task("textures", "lite0", "sgd", 8, epochs=1, n_train=400, n_valid=1_000),
    "letters-cnn-sgd-bs32-e3": Task("letters", "cnn", "sgd", 32, epochs=3, n_train=16_000, n_valid=1_000),
}


# ---------------------------------------------------------------- data: fixed per task, generated or shipped


def _digits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits 5-9 (the tiny CNN's body saw 0-4), grey levels in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    keep = y >= 5
    return (x[keep] / 16.0).reshape(-1, 1, 8, 8), y[keep] - 5


def _shapes(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Discs, squares and triangles of random size, place and colour on a noisy background."""
    xs, ys = [], []
    for i in range(n):
        label = i % 3
        im = Image.fromarray(rng.integers(0, 120, (size, size, 3), dtype=np.uint8))
        r = rng.uniform(5, 12)
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(c) for c in rng.integers(100, 256, 3))
        draw = ImageDraw.Draw(im)
        if label == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif label == 1:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255)
        ys.append(label)
    return np.stack(xs), np.array(ys)


def _photos(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random 32 px crops of sklearn's two sample photos at half size, four classes: top and bottom of each."""
    xs, ys = [], []
    images = [np.asarray(Image.fromarray(im).reduce(2), dtype=np.float32) / 255 for im in load_sample_images().images]
    for i in range(n):
        label = i % 4
        im = images[label // 2]
        h, w, _ = im.shape
        top = rng.integers(0, h // 2 - size) + (h // 2 if label % 2 else 0)
        left = rng.integers(0, w - size)
        crop = im[top : top + size, left : left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        xs.append(crop.transpose(2, 0, 1))
        ys.append(label)
    return np.stack(xs), np.array(ys)


def _textures(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sine gratings in four orientations (0, 45, 90, 135 degrees, jittered by up to 15), random period,
    phase, contrast and tint: a texture task, unlike the other data sets' objects and digits."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xs, ys = [], []
    for i in range(n):
        label = i % 4
        angle = np.deg2rad(45 * label + rng.uniform(-15, 15))
        period = rng.uniform(4, 12)
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
        grey = 0.5 + 0.5 * rng.uniform(0.15, 0.8) * wave + rng.normal(0, 0.25, (size, size))
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        xs.append(np.clip(grey[None] * tint[:, None, None], 0, 1).astype(np.float32))
        ys.append(label)
    return np.stack(xs), np.array(ys)


def _letters(rng: np.random.Generator, n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Ten capital letters in Pillow's bundled font, random size, place, slant and brightness, on a noisy
    background, grey 16 px: a data set of tens of thousands of small images generated in seconds."""
    from PIL import ImageFont

    letters = "ABCDEFGHJK"
    xs, ys = [], []
    for i in range(n):
        label = i % len(letters)
        im = Image.new("L", (20, 20), 0)
        font = ImageFont.load_default(size=float(rng.uniform(9, 15)))
        ImageDraw.Draw(im).text(
            (rng.uniform(0, 8), rng.uniform(-3, 6)), letters[label], fill=int(rng.integers(110, 256)), font=font
        )
        im = im.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR).resize((size, size), Image.BILINEAR)
        grey = np.asarray(im, dtype=np.float32) / 255 + rng.normal(0, 0.2, (size, size))
        xs.append(np.clip(grey, 0, 1)[None].astype(np.float32))
        ys.append(label)
    return np.stack(xs), np.array(ys)


def task_data(task: Task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_valid, y_valid) shaped for the task's body; the same on every call."""
    rng = np.random.default_rng(1234)
    n = task.n_train + task.n_valid
    make = {"digits": _digits, "shapes": _shapes, "photos": _photos, "textures": _textures, "letters": _letters}
    x, y = make[task.data](rng, n)
    order = rng.permutation(len(y))[:n]
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    if task.body == "lite0":
        if x.shape[1] == 1:
            x = F.interpolate(x, size=32, mode="bilinear").expand(-1, 3, -1, -1)
        mean, std = torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), torch.tensor(INPUT_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    elif x.shape[1] == 3:
        x = F.interpolate(x.mean(1, keepdim=True), size=16, mode="bilinear")  # grey 16 px for the tiny CNN
    return x[: task.n_train], y[: task.n_train], x[task.n_train :], y[task.n_train :]


_BODY_CACHE: dict[str, dict] = {}


def make_learner(name: str, seed: int, work: Path = WORK) -> Learner:
    """A frozen transfer Learner for task ``name``; ``seed`` fixes the head's initialisation and the batch order."""
    task = TASKS[name]
    xt, yt, xv, yv = task_data(task)
    set_seed(seed, reproducible=True)
    n_out = int(yt.max()) + 1
    train = DataLoader(list(zip(xt, yt, strict=True)), bs=task.bs, shuffle=True, drop_last=True)
    dls = DataLoaders(train, DataLoader(list(zip(xv, yv, strict=True)), bs=100))
    if task.body == "cnn":
        if "cnn" not in _BODY_CACHE:
            _BODY_CACHE["cnn"] = pretrained_body()
        set_seed(seed, reproducible=True)
        model, splitter = tiny_cnn(n_out), three_groups
        model[0].load_state_dict(_BODY_CACHE["cnn"])
    else:
        model, splitter = lite0_model(n_out), lite0_splitter
    opt = Adam if task.opt == "adam" else SGD
    learn = Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(),
        opt_func=opt,
        splitter=splitter,
        metrics=accuracy,
        path=work / name / f"s{seed}",  # lr_find keeps its temporary weights here
    )
    learn.freeze()
    return learn


# ---------------------------------------------------------------- the data files: append-only tables


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def write_rows(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


class Recorder:
    """The benchmark's results so far, with the clock that ends a chunk."""

    def __init__(self, data: Path, work: Path, max_minutes: float) -> None:
        self.data, self.work = data, work
        self.grid = read_rows(data / scoring.GRID_FILE)
        self.ranges = read_rows(data / scoring.RANGE_FILE)
        self.deadline = time.monotonic() + 60 * max_minutes
        self.trained = 0

    def out_of_time(self) -> bool:
        """True once the chunk's time is up; every chunk trains at least once, so chunks always progress."""
        return self.trained > 0 and time.monotonic() > self.deadline

    def has_grid(self, name: str, seed: int, stage: str, lr: float) -> bool:
        return any(
            r["task"] == name and int(r["seed"]) == seed and r["stage"] == stage and np.isclose(float(r["lr"]), lr)
            for r in self.grid
        )

    def has_range(self, name: str, seed: int, stage: str) -> bool:
        return any(r["task"] == name and int(r["seed"]) == seed and r["stage"] == stage for r in self.ranges)

    def add_grid(self, row: dict) -> None:
        self.trained += 1
        self.grid.append(row)
        write_rows(self.data / scoring.GRID_FILE, GRID_FIELDS, self.grid)

    def add_range(self, row: dict) -> None:
        self.ranges.append(row)
        write_rows(self.data / scoring.RANGE_FILE, RANGE_FIELDS, self.ranges)


def fit(learn: Learner, epochs: int, lr: float | slice) -> tuple[float, float, float, float]:
    """``fit_one_cycle(epochs, lr)``: (accuracy, valid loss, last train loss, seconds)."""
    started = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
    seconds = time.perf_counter() - started
    train_loss, valid_loss, acc = (float(v) for v in learn.recorder.values[-1])
    return acc, valid_loss, train_loss, seconds


def start_unfrozen(name: str, seed: int, checkpoint_lr: float, work: Path = WORK) -> Learner:
    """The task's Learner at its frozen checkpoint (trained once at ``checkpoint_lr``), unfrozen."""
    ckpt = work / name / f"frozen-s{seed}-{checkpoint_lr:.3g}.pth"
    if not ckpt.exists():
        learn = make_learner(name, seed, work)
        fit(learn, TASKS[name].epochs, checkpoint_lr)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(learn.model.state_dict(), ckpt.with_suffix(".part"))
        ckpt.with_suffix(".part").replace(ckpt)
    # Always a fresh Learner from the file: the same start (batch order, random state) in every chunk.
    learn = make_learner(name, seed, work)
    learn.model.load_state_dict(torch.load(ckpt, weights_only=True))
    learn.unfreeze()
    learn.create_opt()  # a fresh optimiser, as after the pipeline's unfreeze stage
    return learn


def pipeline_range_test(learn: Learner) -> tuple[np.ndarray, np.ndarray]:
    """The range test as the pipeline's lr-suggest runs it (:mod:`lrgate.training.stage_functions`): fastai's
    ``lr_find`` with its early stop, and again without it when the curve stopped too early to read (a low loss, a
    well-trained head say, passes fastai's 4x-best stop within a few noisy batches)."""
    lrs, losses = run_range_test(learn)
    try:
        clean_curve(lrs, losses, DEFAULT_NOISE)
    except ShortCurveError:
        lrs, losses = run_range_test(learn, stop_div=False)
    return lrs, losses


def record_task(name: str, seeds: list[int], all_seeds: list[int], rec: Recorder) -> bool:
    """Record what is missing for one task (``seeds`` of it); False when the chunk's time ran out.

    The unfrozen stage waits for the frozen grid of ``all_seeds``: its checkpoint lr is the best over all of them,
    the same for every seed and every chunk (checked against the one recorded before).
    """
    grid_of = {"frozen": FROZEN_GRID, "unfrozen": UNFROZEN_GRID}
    checkpoint_lr = float("nan")

    def start(stage: str, seed: int) -> Learner:
        if stage == "frozen":
            return make_learner(name, seed, rec.work)
        return start_unfrozen(name, seed, checkpoint_lr, rec.work)

    for stage in ("frozen", "unfrozen"):
        if stage == "unfrozen":
            if not all(rec.has_grid(name, seed, "frozen", lr) for seed in all_seeds for lr in FROZEN_GRID):
                return True  # the frozen grid is unfinished: the checkpoint lr is not known yet
            frozen = scoring.mean_accuracy(scoring.grid_frame(rec.grid), name, "frozen", all_seeds)
            checkpoint_lr = float(frozen.idxmax())
            recorded = {float(r["checkpoint_lr"]) for r in rec.ranges if r["task"] == name and r["checkpoint_lr"]}
            if any(not np.isclose(lr, checkpoint_lr, rtol=1e-5) for lr in recorded):
                raise SystemExit(f"{name}: checkpoint lr {checkpoint_lr:.6g} differs from the recorded {recorded}")
        for seed in seeds:
            if not rec.has_range(name, seed, stage):
                if rec.out_of_time():
                    return False
                learn = start(stage, seed)
                started = time.perf_counter()
                with learn.no_bar():
                    lrs, losses = pipeline_range_test(learn)
                seconds = time.perf_counter() - started
                write_curve_csv(rec.data / "curves" / scoring.curve_name(name, seed, stage), lrs, losses)
                rec.add_range(
                    {
                        "task": name,
                        "seed": seed,
                        "stage": stage,
                        "points": len(lrs),
                        "seconds": round(seconds, 2),
                        "checkpoint_lr": "" if stage == "frozen" else f"{checkpoint_lr:.6g}",
                    }
                )
                print(f"{name} s{seed} {stage}: range test, {len(lrs)} points, {seconds:.1f} s", flush=True)
            for lr in grid_of[stage]:
                if rec.has_grid(name, seed, stage, lr):
                    continue
                if rec.out_of_time():
                    return False
                learn = start(stage, seed)
                value = lr if stage == "frozen" else slice(lr / 10, lr)
                acc, valid_loss, train_loss, seconds = fit(learn, TASKS[name].epochs, value)
                rec.add_grid(
                    {
                        "task": name,
                        "seed": seed,
                        "stage": stage,
                        "lr": f"{lr:.6g}",
                        "accuracy": f"{acc:.4f}",
                        "valid_loss": f"{valid_loss:.4g}",
                        "train_loss": f"{train_loss:.4g}",
                        "seconds": f"{seconds:.2f}",
                    }
                )
                print(f"{name} s{seed} {stage} lr {lr:.2g}: accuracy {acc:.3f} ({seconds:.1f} s)", flush=True)
    return True


def race_curve(
    bench: scoring.Benchmark,
    name: str,
    seed: int,
    stage: str,
    budget: float,
    work: Path,
    head_lr: float | None = None,
) -> tuple[dict, dict]:
    """Race on one recorded curve, from the start its grid trained from: the row for ``races.csv``, and the
    race's whole record (every trial, by rung) for ``race_trials.jsonl``."""
    if stage == "frozen":
        learn = make_learner(name, seed, work)
    else:
        ranges = bench.ranges
        (row,) = ranges[(ranges["task"] == name) & (ranges["seed"] == seed) & (ranges["stage"] == stage)].itertuples()
        learn = start_unfrozen(name, seed, float(row.checkpoint_lr), work)
    lrs, losses = bench.curves[(name, seed, stage)]
    row = {"lrgate": lrgate.__version__, "task": name, "seed": seed, "stage": stage, "budget": f"{budget:g}"}
    key = dict(row)
    try:
        s = suggest(lrs, losses, stage, n_groups=len(learn.opt.param_lists))  # the stages are suggest's states
    except CurveError as e:  # a curve nothing can read: the gate fails, scored like a curve rule that fails there
        failed = {"score": "", "winner": "nan", "candidates": "", "iterations": 0}
        failed["stage_iterations"] = stage_length(learn, TASKS[name].epochs)
        return {**row, **failed, "trainings": "0.000", "seconds": "0.00"}, {**key, "error": str(e)}
    with learn.no_bar():
        s = race_suggestion(
            learn,
            s,
            (lrs, losses),
            epochs=TASKS[name].epochs,
            range_test_iterations=100,
            budget=budget,
            head_lr=head_lr,
            log=noop,
        )
    r = s.race
    row |= {
        "score": r.score,
        "winner": f"{r.winner:.6g}",
        "candidates": " ".join(f"{c:.3g}" for c in r.candidates),
        "iterations": r.iterations,
        "stage_iterations": r.stage_iterations,
        "trainings": f"{r.cost_in_trainings:.3f}",
        "seconds": f"{r.seconds:.2f}",
    }
    return row, {**key, **r.to_dict()}


def frozen_winner(rows: list[dict], name: str, seed: int, budget: float) -> float | None:
    """The frozen race's winner of this task, seed and budget (``races.csv`` rows): the lr its unfrozen race spans
    around, as the pipeline's gate 2 races around gate 1's lr; None when there is none or it is not finite (the
    frozen curve could not be read)."""
    found = [
        float(r["winner"])
        for r in rows
        if (r["task"], int(r["seed"]), r["stage"], float(r["budget"])) == (name, seed, "frozen", budget)
    ]
    return usable_head_lr(found[-1]) if found else None


def _finite_or_none(value):
    """``value`` with every non-finite float (a diverged trial's metric, say) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def noop(_: str) -> None:
    pass


def race(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    bench = scoring.load_benchmark(args.data)
    path, trials_path = args.data / scoring.RACE_FILE, args.data / scoring.RACE_TRIALS_FILE
    rows = read_rows(path)
    records = trials_path.read_text().splitlines(keepends=True) if trials_path.exists() else []
    deadline, raced = time.monotonic() + 60 * args.max_minutes, 0
    done = {(r["task"], int(r["seed"]), r["stage"], float(r["budget"])) for r in rows}
    for budget in args.budget:
        for name, seed in bench.pairs(args.split):
            for stage in scoring.STAGES:
                if (name, seed, stage, budget) in done:
                    continue
                if raced and time.monotonic() > deadline:  # every chunk races at least once
                    print(f"chunk time ({args.max_minutes:g} min) is up: run the same command again to go on")
                    return 0
                head_lr = frozen_winner(rows, name, seed, budget) if stage == "unfrozen" else None
                if stage == "unfrozen" and head_lr is None:  # as the pipeline's gate 2 without gate 1's lr
                    print(f"{name} s{seed} budget {budget:g}: no frozen winner to race around: the test's window")
                row, record = race_curve(bench, name, seed, stage, budget, args.work, head_lr)
                raced += 1
                records.append(json.dumps(_finite_or_none(record), allow_nan=False) + "\n")
                write_text(trials_path, "".join(records))  # first: no row without its trials (a rerun's comes last)
                rows.append(row)
                write_rows(path, RACE_FIELDS, rows)
                outcome = (
                    f"no race, the gate fails: {record['error']}"
                    if "error" in record
                    else f"winner {row['winner']} ({row['trainings']} trainings, {row['seconds']} s)"
                )
                print(f"{name} s{seed} {stage} budget {budget:g}: {outcome}", flush=True)
    print("all raced")
    return 0


def repick(args: argparse.Namespace) -> int:
    """Pick each race recorded by lrgate ``args.trials_by`` again from its recorded trials, with this lrgate's rule
    (:func:`lrgate.core.race_plan.race_winner`). Exact, and free of a second draw's float noise, when only the pick
    changed since those trials ran (their candidates, rungs and survivors did not): say so by naming the version.
    The row and the record become this lrgate's; the record names the lrgate that ran its trials (``trials_by``,
    kept from an earlier repick)."""
    path, trials_path = args.data / scoring.RACE_FILE, args.data / scoring.RACE_TRIALS_FILE
    rows, records = read_rows(path), [json.loads(line) for line in trials_path.read_text().splitlines()]
    by_key = {(r["task"], str(r["seed"]), r["stage"], r["budget"]): r for r in records}
    changed = 0
    for row in rows:
        record = by_key[(row["task"], row["seed"], row["stage"], row["budget"])]
        if row["lrgate"] != args.trials_by or record["lrgate"] != args.trials_by:
            continue
        record |= {"lrgate": lrgate.__version__, "trials_by": record.get("trials_by", args.trials_by)}
        row["lrgate"] = lrgate.__version__
        if "error" in record:  # a curve nothing can read: no trials, nothing to pick
            continue
        trials = [Trial.from_dict(t) for t in record["trials"]]
        n_valid, stage_iterations = TASKS[row["task"]].n_valid, record["cost"]["stage_iterations"]
        winner, warnings = race_winner(
            trials, record["score"], n_valid, stage_iterations, record["slice_ratio"] is not None
        )
        changed += winner != record["winner"]
        record |= {"winner": winner, "warnings": list(warnings)}
        row["winner"] = f"{winner:.6g}"
    write_text(trials_path, "".join(json.dumps(_finite_or_none(r), allow_nan=False) + "\n" for r in records))
    write_rows(path, RACE_FIELDS, rows)
    print(f"picked again from {args.trials_by}'s trials: {changed} of {len(rows)} winners changed")
    return 0


def record(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    split = scoring.read_split(args.data)
    seeds_of = {name: split["seeds"] for name in split["tasks"]}
    for later in scoring.LATER_SPLITS:  # each later split's tasks, with that split's own seeds
        seeds_of |= {name: split[later]["seeds"] for name in split.get(later, {}).get("tasks", [])}
    rec = Recorder(args.data, args.work, args.max_minutes)
    for name in args.tasks or list(seeds_of):
        if name not in seeds_of:
            raise SystemExit(f"unknown task {name!r}; known: {', '.join(seeds_of)}")
        seeds = seeds_of[name]
        if not record_task(name, args.seeds or seeds, seeds, rec):
            print(f"chunk time ({args.max_minutes:g} min) is up: run the same command again to go on")
            return 0
    print("all recorded")
    return 0


def score(args: argparse.Namespace) -> int:
    bench = scoring.load_benchmark(args.data)
    if not bench.pairs(args.split):
        print(f"the {args.split} split has no recorded curves yet: `record` trains them first", file=sys.stderr)
        return 2
    extra = dict(scoring.carried_over(bench)) if args.split in scoring.LATER_SPLITS else {}
    extra |= scoring.race_methods(args.data)
    for n in args.sweeps:
        extra[scoring.SWEEP_NAME.format(n)] = scoring.sweep_method(bench, args.split, n)
    extra[scoring.OWN_GRID] = scoring.own_seed_grid(bench, args.split)
    table = scoring.score_table(bench, args.split, extra=extra)
    print(scoring.format_table(table, args.split))
    print()
    print(scoring.format_costs(bench))
    if args.plot:
        scoring.regret_plot(table, args.plot, title=f"lr suggestions against the oracle grid ({args.split} split)")
        print(f"\nplot: {args.plot}")
    if args.cost_plot:
        grid_size = {"frozen": len(FROZEN_GRID), "unfrozen": len(UNFROZEN_GRID)}
        scoring.cost_plot(table, args.cost_plot, grid_size, title=f"regret against cost ({args.split} split)")
        print(f"cost plot: {args.cost_plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="train what is missing (resumable)")
    r.add_argument("--max-minutes", type=float, default=100, help="stop starting new trainings after this long")
    r.add_argument("--tasks", nargs="*", help="only these tasks (default: every split's, in order)")
    r.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    r.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    r.add_argument("--work", type=Path, default=WORK, help="checkpoints and lr_find scratch")
    r.set_defaults(run=record)
    c = sub.add_parser("race", help="run the race on each recorded curve of a split (resumable)")
    c.add_argument("--split", default="third", help="which curves (default: %(default)s)")
    c.add_argument("--budget", nargs="*", type=float, default=[1.0], help="budgets in trainings of the stage")
    c.add_argument("--max-minutes", type=float, default=30, help="stop starting new races after this long")
    c.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    c.add_argument("--work", type=Path, default=WORK, help="checkpoints and lr_find scratch")
    c.set_defaults(run=race)
    k = sub.add_parser("repick", help="pick each race's winner again from its recorded trials (no training)")
    k.add_argument("--trials-by", required=True, help="the lrgate version whose races to pick again, e.g. 0.7.0")
    k.set_defaults(run=repick)
    s = sub.add_parser("score", help="score every method from the saved data (no training)")
    s.add_argument(
        "--split",
        choices=("held_out", "new_tasks", *scoring.LATER_SPLITS, "tuning", "all"),
        default="held_out",
    )
    s.add_argument("--plot", type=Path, help="write the regret plot (PNG) here")
    s.add_argument("--cost-plot", type=Path, help="write the regret-vs-cost plot (PNG) here")
    s.add_argument("--sweeps", nargs="*", type=int, default=[3, 8], help="Optuna sweeps of N full trainings")
    s.set_defaults(run=score)
    for p in (r, c, k, s):
        p.add_argument("--data", type=Path, default=DATA, help="the data files (default: %(default)s)")
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
