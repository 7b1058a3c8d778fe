"""Image data sets for the pipeline: list, check, fingerprint and load them as fastai DataLoaders.

Every source ends as a list of image paths and their labels, checked where it enters: a missing folder,
no images, a single class, a corrupt image or a CSV without its columns is a :class:`DataError` that
names the file. The demo set is real: scikit-learn's handwritten digits, written once as PNG files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lrgate.core.config import DataConfig
from lrgate.core.errors import LrgateError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEMO_IMAGE_SIZE = 32  # the digits are 8x8; stored larger so that Resize does not have to invent them


class DataError(LrgateError):
    """An image data set that cannot be used (the message names the folder or file)."""


@dataclass(frozen=True)
class ImageSet:
    """Image paths and their labels, plus a fingerprint of both (paths, sizes, mtimes, labels)."""

    items: tuple[Path, ...]
    labels: tuple[str, ...]
    root: Path
    fingerprint: str

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


class LabelTable:
    """Label lookup for images listed in a CSV file (a class, not a lambda, so an exported Learner pickles)."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def __call__(self, item: os.PathLike | str) -> str:
        return self.labels[str(item)]


def folder_label(item: os.PathLike | str) -> str:
    """The label of ``root/<label>/<image>``."""
    return Path(item).parent.name


def write_demo_digits(root: Path, per_class: int | None = None) -> Path:
    """Write scikit-learn's digits as ``root/<digit>/<n>.png`` once (atomically: a folder renamed into place)."""
    target = root / (f"digits-{per_class}" if per_class else "digits")
    if target.is_dir():
        return target
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    try:
        counts: dict[int, int] = {}
        for pixels, label in zip(x, y, strict=True):
            n = counts.get(int(label), 0)
            if per_class is not None and n >= per_class:
                continue
            counts[int(label)] = n + 1
            (tmp / str(label)).mkdir(exist_ok=True)
            image = Image.fromarray((pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8), mode="L")
            image.resize((DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), Image.Resampling.BILINEAR).save(
                tmp / str(label) / f"{n}.png"
            )
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another run (a fleet's first runs start together) put the same images there first: keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _fingerprint(items: list[Path], labels: list[str], root: Path) -> str:
    h = hashlib.sha256()
    for item, label in zip(items, labels, strict=True):
        st = item.stat()
        h.update(f"{item.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()[:16]


def _folder_items(root: Path) -> tuple[list[Path], list[str]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder of images per class)")
    items = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not items:
        raise DataError(f"{root}: no images found (expected {root}/<label>/<image>.png|jpg|...)")
    return items, [folder_label(p) for p in items]


def _csv_items(csv: Path, path_column: str, label_column: str) -> tuple[list[Path], list[str]]:
    if not csv.is_file():
        raise DataError(f"{csv}: no such CSV file")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{csv}: not a readable CSV file ({str(e).splitlines()[0]})") from None
    missing = [c for c in (path_column, label_column) if c not in table.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})")
    if table.empty:
        raise DataError(f"{csv}: no rows")
    items = [(csv.parent / p).resolve() for p in table[path_column]]
    absent = [str(p) for p in items if not p.is_file()]
    if absent:
        raise DataError(f"{csv}: {len(absent)} image(s) listed but missing, e.g. {absent[0]}")
    return items, list(table[label_column])


def check_images(items: list[Path]) -> None:
    """Open every image; raise :class:`DataError` naming the ones that cannot be read."""
    bad = []
    for item in items:
        try:
            with Image.open(item) as im:
                im.draft(im.mode, (32, 32))
                im.load()
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(item)
    if bad:
        names = ", ".join(str(p) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} image(s) cannot be read: {names}; remove or replace them")


def list_images(cfg: DataConfig, cache_dir: Path, *, check: bool = True) -> ImageSet:
    """List, check (unless ``check`` is False) and fingerprint the images ``cfg`` names.

    The demo set is written under ``cache_dir`` on first use.
    """
    if cfg.source == "demo":
        root = write_demo_digits(cache_dir, cfg.per_class)
        items, labels = _folder_items(root)
    elif cfg.source == "folder":
        root = cfg.path
        items, labels = _folder_items(root)
    else:
        root = cfg.path.parent
        items, labels = _csv_items(cfg.path, cfg.path_column, cfg.label_column)
    if len(set(labels)) < 2:
        raise DataError(f"{root}: found only the class {labels[0]!r}; a classifier needs at least two")
    if check:
        check_images(items)
    return ImageSet(tuple(items), tuple(labels), root, _fingerprint(items, labels, root))


def build_dataloaders(
    images: ImageSet,
    *,
    image_size: int,
    batch_size: int,
    valid_pct: float,
    seed: int,
    device: str,
    num_workers: int = 0,
):
    """fastai DataLoaders over ``images``: resized to ``image_size``, a seeded random validation split."""
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import RandomSplitter
    from fastai.vision.augment import Resize
    from fastai.vision.data import ImageBlock

    by_folder = all(folder_label(p) == label for p, label in zip(images.items, images.labels, strict=True))
    get_y = folder_label if by_folder else LabelTable(dict(zip(map(str, images.items), images.labels, strict=True)))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_y=get_y,
        splitter=RandomSplitter(valid_pct, seed=seed),
        item_tfms=Resize(image_size),
    )
    valid_n = int(len(images.items) * valid_pct)
    if valid_n < 1 or len(images.items) - valid_n < batch_size:
        raise DataError(
            f"{images.root}: {len(images.items)} images are too few for batch_size {batch_size} with "
            f"valid_pct {valid_pct}; add images or lower train.batch_size"
        )
    return block.dataloaders(
        list(images.items), bs=batch_size, device=device, num_workers=num_workers, pin_memory=device == "cuda"
    )
