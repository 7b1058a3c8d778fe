"""Image data sets: listed, checked and fingerprinted where they enter, with errors that name the file."""

from __future__ import annotations

import pytest

from lrgate.core.config import DataConfig
from lrgate.training.data import DataError, build_dataloaders, list_images, write_demo_digits
from tests.conftest import make_image_folder


def folder(path) -> DataConfig:
    return DataConfig(source="folder", path=path)


def test_demo_digits_are_written_once_as_real_pngs(tmp_path):
    root = write_demo_digits(tmp_path, per_class=5)
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    assert len(list(root.glob("*/*.png"))) == 50
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/*.png")}
    assert write_demo_digits(tmp_path, per_class=5) == root
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*.png")} == before


def test_two_runs_writing_the_demo_digits_at_once_both_get_them(tmp_path, monkeypatch):
    # The other run's rename lands between this one's check and its own rename (a fleet's first runs).
    import os

    import lrgate.training.data

    other = write_demo_digits(tmp_path / "other", per_class=3)
    real_replace = os.replace

    def rename_after_the_other_run(src, dst):
        real_replace(other, dst)
        real_replace(src, dst)  # onto a non-empty folder: refused, as it would be

    monkeypatch.setattr(lrgate.training.data.os, "replace", rename_after_the_other_run)
    root = write_demo_digits(tmp_path, per_class=3)
    assert len(list(root.glob("*/*.png"))) == 30
    assert not list(tmp_path.glob(".digits-*"))  # this run's copy is cleaned up


def test_folder_images_and_labels(tmp_path):
    images = list_images(folder(make_image_folder(tmp_path / "img")), tmp_path)
    assert images.classes == ["circle", "square"] and len(images.items) == 48


def test_fingerprint_changes_when_the_data_does(tmp_path):
    root = make_image_folder(tmp_path / "img")
    first = list_images(folder(root), tmp_path).fingerprint
    assert list_images(folder(root), tmp_path).fingerprint == first
    (root / "square" / "0.png").unlink()
    assert list_images(folder(root), tmp_path).fingerprint != first


def test_csv_source(tmp_path):
    root = make_image_folder(tmp_path / "img")
    rows = [
        f"img/{p.parent.name}/{p.name},{'round' if p.parent.name == 'circle' else 'boxy'}" for p in root.glob("*/*")
    ]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    images = list_images(DataConfig(source="csv", path=tmp_path / "labels.csv"), tmp_path)
    assert images.classes == ["boxy", "round"]
    dls = build_dataloaders(images, image_size=16, batch_size=8, valid_pct=0.25, seed=0, device="cpu")
    assert set(dls.vocab) == {"boxy", "round"}


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        list_images(folder(tmp_path / "img"), tmp_path)


def test_a_corrupt_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "img")
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"1 image\(s\) cannot be read: .*broken\.png"):
        list_images(folder(root), tmp_path)


def test_a_single_class_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "img", classes=("only",))
    with pytest.raises(DataError, match="only the class 'only'"):
        list_images(folder(root), tmp_path)


def test_csv_errors_name_the_problem(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(DataError, match="missing column"):
        list_images(DataConfig(source="csv", path=tmp_path / "a.csv"), tmp_path)
    (tmp_path / "b.csv").write_text("path,label\nx.png,a\ny.png,b\n")
    with pytest.raises(DataError, match="2 image\\(s\\) listed but missing"):
        list_images(DataConfig(source="csv", path=tmp_path / "b.csv"), tmp_path)


def test_too_few_images_for_the_batch_size(tmp_path):
    images = list_images(folder(make_image_folder(tmp_path / "img", per_class=4)), tmp_path)
    with pytest.raises(DataError, match="too few for batch_size 64"):
        build_dataloaders(images, image_size=16, batch_size=64, valid_pct=0.2, seed=0, device="cpu")
