"""lrgate's work pool base job templates (``deployments/work-pools/<kind>.json``): load, check, render.

Each template is Prefect's default for its worker type (``prefect work-pool get-default-base-job-template
--type KIND``) plus a GPU request: ``cuda_visible_devices`` (process: the run's ``CUDA_VISIBLE_DEVICES``),
``gpu_count`` (docker: an nvidia device request) or ``gpu_limit`` (kubernetes: ``nvidia.com/gpu`` in the job
container's limits), with ``lrgate:latest`` (the repository's ``Dockerfile``) as the default image.

:func:`render` computes offline what a worker would build from a template and a flow run's job variables: the
same defaults, schema check and placeholder filling as Prefect's server (at deploy time and when a run is created)
and workers (``BaseJobConfiguration.from_template_and_values``), with no server, docker daemon or cluster.
:func:`submission` reads from that the image, command and GPU request a worker would submit.

The templates are read from the repository (a checkout, or the editable install ``make`` builds): pools are
created from a checkout, and a flow run never needs them, so the package does not ship a copy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from jsonschema.exceptions import ValidationError as SchemaError
from prefect.utilities.schema_tools import ValidationError, validate
from prefect.utilities.templating import apply_values

from lrgate.errors import LrgateError

Kind = Literal["process", "docker", "kubernetes"]
KINDS: tuple[Kind, ...] = get_args(Kind)
TEMPLATES = Path(__file__).resolve().parents[1] / "deployments" / "work-pools"

# What a worker runs when no `command` job variable is given (prefect.workers: the process worker's fallback,
# and BaseJobConfiguration._base_flow_run_command for docker and kubernetes).
DEFAULT_COMMANDS: dict[Kind, str] = {
    "process": "python -m prefect.engine",
    "docker": "prefect flow-run execute",
    "kubernetes": "prefect flow-run execute",
}


class WorkPoolTemplateError(LrgateError, ValueError):
    """A work pool template that is missing or malformed, or job variables that it refuses."""


@dataclasses.dataclass(frozen=True)
class Submission:
    """What a worker of ``kind`` would submit for a flow run (before it adds Prefect's own env and labels).

    ``gpu_request`` is the request as submitted: ``{"CUDA_VISIBLE_DEVICES": "1"}`` (process; empty when the run
    inherits the worker's), the docker device request, or ``{"nvidia.com/gpu": n}`` (kubernetes limits).
    ``image`` is None for a process pool; ``command`` is the argument list (the worker's default when unset).
    """

    kind: Kind
    image: str | None
    command: list[str]
    gpu_request: dict[str, Any]
    env: dict[str, str]


def template_path(kind: str, folder: Path = TEMPLATES) -> Path:
    """The template file of a pool type; raises WorkPoolTemplateError for a type lrgate has no template for."""
    if kind not in KINDS:
        raise WorkPoolTemplateError(f"no work pool template for type {kind!r}: choose one of {', '.join(KINDS)}")
    return Path(folder) / f"{kind}.json"


def load_template(kind: str, folder: Path = TEMPLATES) -> dict[str, Any]:
    """The base job template of ``kind``, as ``prefect work-pool create --base-job-template`` reads it.

    Raises WorkPoolTemplateError naming the file when it is missing, not JSON, or lacks ``job_configuration``
    or ``variables.properties``.
    """
    path = template_path(kind, folder)
    try:
        template = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkPoolTemplateError(
            f"{path}: no such file (the templates are read from a checkout of the lrgate repository)"
        ) from None
    except json.JSONDecodeError as exc:
        raise WorkPoolTemplateError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(template, dict) or not isinstance(template.get("job_configuration"), dict):
        raise WorkPoolTemplateError(f"{path}: job_configuration: missing (a base job template needs one)")
    variables = template.get("variables")
    if not isinstance(variables, dict) or not isinstance(variables.get("properties"), dict):
        raise WorkPoolTemplateError(f"{path}: variables.properties: missing (a base job template needs one)")
    return template


def render(template: Mapping[str, Any], job_variables: Mapping[str, Any]) -> dict[str, Any]:
    """The job configuration a worker builds from ``template`` and a flow run's merged job variables.

    Variables missing from ``job_variables`` take their template defaults; the result is checked against
    ``template["variables"]`` as Prefect's server checks it, then filled into ``template["job_configuration"]``
    as a worker fills it (``env`` merged over an ``env`` the configuration sets itself; a placeholder with no
    value drops its key). Raises WorkPoolTemplateError naming the variable for a value the schema refuses, and
    in two cases that Prefect's server lets through: a name the template does not declare (a worker ignores
    it: a typo would go unnoticed) and null for a variable with a default (it would reach the job as null).
    """
    properties = template["variables"]["properties"]
    unknown = sorted(set(job_variables) - set(properties))
    if unknown:
        raise WorkPoolTemplateError(
            f"job variable {unknown[0]!r}: not declared by this template (declared: {', '.join(properties)})"
        )
    # Workers fill in only non-null defaults.
    defaults = {name: schema["default"] for name, schema in properties.items() if schema.get("default") is not None}
    values = defaults | dict(job_variables)
    try:
        validate(values, template["variables"], raise_on_error=True)
    except ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, SchemaError):
            name = cause.json_path.removeprefix("$").removeprefix(".") or "(all)"
            # Prefect lets an optional variable be null (unset): say what the non-null branch wants.
            reasons = [e.message for e in cause.context if e.schema.get("type") != "null"] or [cause.message]
            raise WorkPoolTemplateError(f"job variable {name!r}: {'; '.join(reasons)}") from None
        raise WorkPoolTemplateError(f"job variables: {exc}") from None

    configuration = copy.deepcopy(dict(template["job_configuration"]))
    # As BaseJobConfiguration.from_template_and_values: an env default, then the run's env, merge over an env
    # dict the configuration sets itself (the process template's CUDA_VISIBLE_DEVICES).
    if defaults.get("env"):
        env = configuration.get("env")
        configuration["env"] = env | defaults["env"] if isinstance(env, dict) else dict(defaults["env"])
    if isinstance(configuration.get("env"), dict) and values.get("env"):
        configuration["env"] = configuration["env"] | values["env"]
    return apply_values(configuration, values, remove_notset=True)


def submission(kind: str, job_variables: Mapping[str, Any], folder: Path = TEMPLATES) -> Submission:
    """Render lrgate's ``kind`` template with ``job_variables`` and read what its worker would submit."""
    configuration = render(load_template(kind, folder), job_variables)
    if kind == "kubernetes":
        container = configuration["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        image, command, env = container.get("image"), container.get("args"), container.get("env", {})
        gpu_request = {k: v for k, v in container["resources"]["limits"].items() if k == "nvidia.com/gpu"}
    elif kind == "docker":
        image, command, env = configuration.get("image"), configuration.get("command"), configuration.get("env", {})
        (gpu_request,) = configuration["container_create_kwargs"]["device_requests"]
    else:
        image, command, env = None, configuration.get("command"), configuration.get("env", {})
        gpu_request = {k: v for k, v in env.items() if k == "CUDA_VISIBLE_DEVICES"}
    return Submission(
        kind=kind,
        image=image,
        command=shlex.split(command or DEFAULT_COMMANDS[kind]),
        gpu_request=gpu_request,
        env=env,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m lrgate.work_pools KIND [JOB_VARIABLES_JSON]``: print what a worker would submit, as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m lrgate.work_pools {process,docker,kubernetes} ['{\"gpu_limit\": 2}']", file=sys.stderr)
        return 2
    try:
        job_variables = json.loads(args[1]) if len(args) == 2 else {}
        if not isinstance(job_variables, dict):
            raise WorkPoolTemplateError(f"job variables: a JSON object is needed, not {args[1]!r}")
        print(json.dumps(dataclasses.asdict(submission(args[0], job_variables)), indent=2))
    except json.JSONDecodeError as exc:
        print(f"lrgate: error: job variables: not valid JSON: {exc}", file=sys.stderr)
        return 1
    except LrgateError as exc:
        print(f"lrgate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
