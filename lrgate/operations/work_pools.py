"""lrgate's work pool base job templates (``deployments/work-pools/<kind>.json``): load, check, render.

Each template is Prefect's default for its worker type (``prefect work-pool get-default-base-job-template
--type KIND``) plus a GPU request: ``cuda_visible_devices`` (process: the run's ``CUDA_VISIBLE_DEVICES``),
``gpu_count`` (docker: an nvidia device request) or ``gpu_limit`` (kubernetes: ``nvidia.com/gpu`` in the job
container's limits), with ``lrgate:latest`` (the repository's ``Dockerfile``) as the default image.

:func:`render` builds offline what a worker builds from a template and a flow run's job variables, with Prefect's own
``BaseJobConfiguration.from_template_and_values`` (defaults, dot keys such as ``"env.FOO"`` merged into ``env``,
placeholders filled), after the server's schema check, with no server, docker daemon or cluster.
:func:`submission` reads from that the image, command and GPU request a worker would submit.

The templates are read from the repository (a checkout, or the editable install ``make`` builds): pools are
created from a checkout, and a flow run never needs them, so the package does not ship a copy.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from jsonschema.exceptions import ValidationError as SchemaError
from prefect.utilities.schema_tools import ValidationError, validate
from prefect.workers.base import BaseJobConfiguration

from lrgate.core.errors import LrgateError

Kind = Literal["process", "docker", "kubernetes"]
KINDS: tuple[Kind, ...] = get_args(Kind)
TEMPLATES = Path(__file__).resolve().parents[2] / "deployments" / "work-pools"

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


class _Rendered(BaseJobConfiguration):
    """``from_template_and_values`` of any worker type, returning the configuration it fills in as a plain dict.

    The method ends with ``cls(**configuration)``; here that call returns ``configuration`` itself, every key kept,
    where a worker's own class (``DockerWorkerJobConfiguration`` of prefect-docker, ``KubernetesWorkerJobConfiguration``
    of prefect-kubernetes: not lrgate dependencies) would read its fields from it.
    """

    def __new__(cls, **configuration: Any) -> dict[str, Any]:
        return configuration


class _NoServer:
    """The client ``from_template_and_values`` resolves Prefect blocks and variables with, offline.

    Passing it keeps Prefect from creating a client of its own (which needs a server, or starts an ephemeral one).
    A template that holds no block or variable reference never calls it; one that does is refused by name.
    """

    @staticmethod
    def _refuse(reference: str) -> WorkPoolTemplateError:
        return WorkPoolTemplateError(
            f"job variables: {reference} needs a Prefect server to resolve (rendering offline resolves none)"
        )

    async def read_block_document_by_name(self, name: str, block_type_slug: str, **_: Any) -> Any:
        raise self._refuse(f"{{{{ prefect.blocks.{block_type_slug}.{name} }}}}")

    async def read_block_document(self, block_document_id: Any, **_: Any) -> Any:
        raise self._refuse(f"block document {block_document_id}")

    async def read_variable_by_name(self, name: str, **_: Any) -> Any:
        raise self._refuse(f"{{{{ prefect.variables.{name} }}}}")


def _from_template_and_values(template: Mapping[str, Any], job_variables: Mapping[str, Any]) -> dict[str, Any]:
    """Run Prefect's async ``from_template_and_values`` to its end, from sync or async code alike.

    With :class:`_NoServer` as its client it waits on nothing, so its coroutine finishes on the first step.
    """
    coroutine: Coroutine[Any, Any, dict[str, Any]] = _Rendered.from_template_and_values(
        dict(template), dict(job_variables), client=_NoServer()
    )
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("rendering a work pool template waited on I/O; offline it has none to wait on")


def render(template: Mapping[str, Any], job_variables: Mapping[str, Any]) -> dict[str, Any]:
    """The job configuration a worker builds from ``template`` and a flow run's merged job variables.

    Rendered by Prefect's ``BaseJobConfiguration.from_template_and_values`` as a worker renders it: variables
    missing from ``job_variables`` take their template defaults, a dot key (``"env.FOO": "1"``) is merged into its
    variable (``env``, nested values winning), ``env`` is merged over an ``env`` the configuration sets itself, and a
    placeholder with no value drops its key. The values are first checked against ``template["variables"]`` as
    Prefect's server checks them. Raises WorkPoolTemplateError naming the variable for a value the schema refuses,
    and in cases that Prefect's server lets through: a name the template does not declare (a worker ignores it: a
    typo would go unnoticed), a dot key's value (the server checks none), null for a variable with a default (it
    would reach the job as null), and a Prefect block or variable reference (offline, nothing resolves it).
    """
    variables = template["variables"]
    properties = variables["properties"]
    for key in job_variables:
        # As the worker reads a dot key: "env.FOO" and "env[0].x" set a value inside variable "env".
        name = key.replace("[", ".").split(".")[0] if "." in key else key
        if name not in properties:
            raise WorkPoolTemplateError(
                f"job variable {key!r}: not declared by this template (declared: {', '.join(properties)})"
            )
    # The variables as the worker merges them (defaults, then dot keys, then the rest), read back through a template
    # that holds each declared variable by its own name; a variable with no value is left out.
    by_name = {"job_configuration": {name: f"{{{{ {name} }}}}" for name in properties}, "variables": variables}
    try:
        values = _from_template_and_values(by_name, job_variables)
    except TypeError as exc:  # set_in_dict: a dot key below a value that is not a dict ("a.b" and "a.b.c")
        raise WorkPoolTemplateError(f"job variables: {exc}") from None
    try:
        validate(values, variables, raise_on_error=True)
    except ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, SchemaError):
            name = cause.json_path.removeprefix("$").removeprefix(".") or "(all)"
            # Prefect lets an optional variable be null (unset): say what the non-null branch wants.
            reasons = [e.message for e in cause.context if e.schema.get("type") != "null"] or [cause.message]
            raise WorkPoolTemplateError(f"job variable {name!r}: {'; '.join(reasons)}") from None
        raise WorkPoolTemplateError(f"job variables: {exc}") from None
    return _from_template_and_values(template, job_variables)


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
    """``python -m lrgate.operations.work_pools KIND [JOB_VARIABLES_JSON]``:
    print what a worker would submit, as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(
            "usage: python -m lrgate.operations.work_pools {process,docker,kubernetes} ['{\"gpu_limit\": 2}']",
            file=sys.stderr,
        )
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
