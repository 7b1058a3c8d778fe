"""Fleet files: which run configs a fleet trains, through which deployment; validated once, when loaded.

A fleet file is YAML, its paths relative to its own folder (as in a run config)::

    name: nightly                                 # the fleet's folder and artifact keys
    deployment: lrgate-pipeline/fleet-member      # FLOW/DEPLOYMENT that runs one config
    configs:
      - configs/fleet-a.yaml                      # a run config, or:
      - config: configs/fleet-b.yaml
        job_variables: {env: {CUDA_VISIBLE_DEVICES: "1"}}   # this run only (Prefect job variables)
        work_queue: gpu-1                                    # this run only
    timeout: 86400                                # seconds to wait for all runs (default: no limit)
    output_dir: runs                              # the fleet report goes in a folder under it

Every run config is loaded here too, so a bad one stops the fleet before any run starts, with an error that
names the fleet file, the entry and the run config's own file and field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lrgate.core.config import ConfigError, RunConfig, describe_validation_error, load_config, read_yaml_mapping

DEFAULT_DEPLOYMENT = "lrgate-pipeline/fleet-member"


class FleetConfigError(ConfigError):
    """A fleet file that is missing, not YAML, has a bad field or lists a bad run config (the message says which)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberFile(_Strict):
    """One entry of ``configs``: a run config, and where its run may go."""

    config: Path
    job_variables: dict[str, Any] = Field(default_factory=dict)
    work_queue: str | None = Field(None, min_length=1)


class FleetFile(_Strict):
    """The fleet file as written (paths not yet resolved)."""

    name: str = Field("fleet", pattern=r"^[a-z0-9][a-z0-9-]*$")
    deployment: str = DEFAULT_DEPLOYMENT
    configs: list[MemberFile] = Field(min_length=1)
    timeout: int | None = Field(None, ge=1)
    output_dir: Path = Path("runs")

    @field_validator("deployment")
    @classmethod
    def _flow_slash_deployment(cls, value: str) -> str:
        if not re.fullmatch(r"[^/\s]+/[^/\s]+", value):
            raise ValueError(f"expected FLOW/DEPLOYMENT (e.g. {DEFAULT_DEPLOYMENT}), got {value!r}")
        return value

    @field_validator("configs", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        """A plain path is short for ``{config: path}``."""
        if not isinstance(value, list):
            return value
        return [{"config": v} if isinstance(v, str) else v for v in value]


@dataclass(frozen=True)
class Member:
    """One run of the fleet: its config (an absolute path, already loaded) and its Prefect overrides."""

    config: Path
    run: RunConfig
    job_variables: dict[str, Any]
    work_queue: str | None


@dataclass(frozen=True)
class Fleet:
    """A loaded fleet file: its paths are absolute and every run config in it loads."""

    path: Path
    name: str
    deployment: str
    members: tuple[Member, ...]
    timeout: int | None
    output_dir: Path


def load_fleet(path: str | os.PathLike) -> Fleet:
    """Load and validate a fleet file and every run config it lists.

    Raises
    ------
    FleetConfigError
        The file is missing or not YAML, a field is unknown or invalid, or a run config it lists does not load
        (the message names ``configs.<i>`` and the run config's own error).
    """
    path = Path(path)
    try:
        spec = FleetFile.model_validate(read_yaml_mapping(path, FleetConfigError, "fleet file"))
    except ValidationError as e:
        raise FleetConfigError(describe_validation_error(e, path)) from None
    base = path.resolve().parent
    members = []
    for i, entry in enumerate(spec.configs):
        config = (base / entry.config).resolve()  # an absolute path stays as it is
        try:
            run = load_config(config)
        except ConfigError as e:
            raise FleetConfigError(f"{path}: configs.{i}: {e}") from None
        members.append(Member(config, run, entry.job_variables, entry.work_queue))
    output_dir = (base / spec.output_dir).resolve()
    return Fleet(path, spec.name, spec.deployment, tuple(members), spec.timeout, output_dir)
