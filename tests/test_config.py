"""Configs are validated at load time; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrgate.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.model.arch == "efficientnet_lite0" and demo.data.source == "demo"
    assert demo.output_dir == ROOT / "runs"  # relative to the config file
    own = load_config(ROOT / "configs" / "my-images.example.yaml")
    assert own.data.source == "folder"


def test_relative_paths_are_read_against_the_config_folder(tmp_path):
    (tmp_path / "images").mkdir()
    cfg = load_config(write(tmp_path, "data: {source: folder, path: images}\noutput_dir: out\n"))
    assert cfg.data.path == tmp_path / "images" and cfg.output_dir == tmp_path / "out"


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n"])
def test_an_empty_file_is_refused_and_braces_mean_the_defaults(tmp_path, text):
    # An empty file (a failed copy, say) used to start a full run with every default.
    with pytest.raises(ConfigError, match="the file is empty: nothing to run"):
        load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, "{}\n")).name == "lrgate"


def test_a_binary_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: not a text file (expected a YAML config file)"


def test_digest_changes_with_the_config(tmp_path):
    a = load_config(write(tmp_path, "seed: 1\n")).digest()
    b = load_config(write(tmp_path, "seed: 2\n")).digest()
    assert a != b and a == load_config(write(tmp_path, "seed: 1\n")).digest()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trian: {}\n", "trian: unknown field"),
        ("train: {batch_size: many}\n", "train.batch_size: Input should be a valid integer"),
        ("train: {batch_size: 0}\n", "train.batch_size: Input should be greater than or equal to 1"),
        ("model: {arch: resnet9000, pretrained: false}\n", "model.arch: unknown arch 'resnet9000'"),
        ("model: {arch: resnet18}\n", "model.weights: a pretrained resnet18 needs a local weights file"),
        ("model: {weights: nowhere.pth}\n", "model.weights: "),
        ("suggest: {method: magic}\n", "suggest.method: unknown method 'magic'"),
        ("suggest: {noise: 0}\n", "suggest.noise"),
        ("data: {source: folder}\n", "data.path is required"),
        ("data: {source: folder, path: missing}\n", "data.path: "),
        ("data: {valid_pct: 1.5}\n", "data.valid_pct"),
        ("lr_find: {start_lr: 1.0, end_lr: 0.1}\n", "end_lr (0.1) must be above start_lr"),
        ("gates: {unfrozen: {slice: [1.0e-3, 1.0e-5]}}\n", "lo <= hi"),
        ("gates: {frozen: {slice: [1.0e-5, 1.0e-3]}}\n", "gates.frozen trains a frozen model with one lr"),
        ("gates: {frozen: {lr: -1}}\n", "gates.frozen.lr"),
        ("gates: {frozen: {policy: sometimes}}\n", "gates.frozen.policy"),
        ("device: tpu\n", "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("precision: fp8\n", "precision"),
        ("name: My Run\n", "name: String should match pattern"),
        ("- just\n- a list\n", "expected a mapping"),
        ("train: {batch_size: [\n", "not valid YAML"),
        ("race: {budget: 0}\n", "race.budget: Input should be greater than 0"),
        ("race: {budjet: 2}\n", "race.budjet: unknown field"),
        ("race: sometimes\n", "race: "),
    ],
)
def test_bad_fields_are_named_with_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize(("text", "raced"), [("{}\n", True), ("race: off\n", False), ("race: {budget: 2}\n", True)])
def test_the_race_is_on_by_default_and_off_says_so(tmp_path, text, raced):
    cfg = load_config(write(tmp_path, text))
    assert (cfg.race is not None) is raced


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
