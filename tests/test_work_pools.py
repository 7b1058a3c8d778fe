"""deployments/work-pools: each template renders the GPU request, image and command a worker would submit,
refuses bad job variables by name, stays Prefect's default plus lrgate's additions, and a real server takes it."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from lrgate.operations.work_pools import (
    KINDS,
    TEMPLATES,
    WorkPoolTemplateError,
    load_template,
    main,
    render,
    submission,
)

ROOT = Path(__file__).resolve().parents[1]

IMAGE = "registry.example/lrgate:1.2"
COMMAND = "prefect flow-run execute --log-level debug"
ENV = {"LRGATE_CONFIG": "configs/scheduled.yaml"}


def container(configuration: dict) -> dict:
    return configuration["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


def test_kubernetes_job_requests_the_gpus_in_its_container_limits():
    job = {"image": IMAGE, "gpu_limit": 2, "env": ENV, "command": COMMAND}
    manifest_container = container(render(load_template("kubernetes"), job))
    assert manifest_container["resources"]["limits"] == {"nvidia.com/gpu": 2}  # cpu and memory: unset, dropped
    assert manifest_container["image"] == IMAGE and manifest_container["env"] == ENV
    assert manifest_container["args"] == COMMAND  # the worker splits it, as submission() does
    assert {"name": "dshm", "mountPath": "/dev/shm"} in manifest_container["volumeMounts"]

    sub = submission("kubernetes", job)
    assert (sub.image, sub.command, sub.gpu_request) == (IMAGE, COMMAND.split(), {"nvidia.com/gpu": 2})


def test_docker_container_gets_an_nvidia_device_request():
    job = {"image": IMAGE, "gpu_count": 2, "env": ENV, "command": COMMAND}
    configuration = render(load_template("docker"), job)
    assert configuration["container_create_kwargs"] == {
        "device_requests": [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}],
        "shm_size": "8g",
    }
    assert configuration["image"] == IMAGE and configuration["env"] == ENV and configuration["command"] == COMMAND
    assert configuration["image_pull_policy"] == "IfNotPresent"  # a locally built lrgate:latest needs no registry

    sub = submission("docker", job)
    assert (sub.image, sub.command, sub.gpu_request["count"]) == (IMAGE, COMMAND.split(), 2)


def test_process_run_is_pinned_to_its_gpu_through_cuda_visible_devices():
    job = {"cuda_visible_devices": "1", "env": ENV, "command": "python -m prefect.engine"}
    configuration = render(load_template("process"), job)
    assert configuration["env"] == {"CUDA_VISIBLE_DEVICES": "1", **ENV}
    sub = submission("process", job)
    assert (sub.image, sub.command) == (None, ["python", "-m", "prefect.engine"])
    assert sub.gpu_request == {"CUDA_VISIBLE_DEVICES": "1"}


def test_defaults_are_one_gpu_in_lrgates_image_and_the_workers_own_command():
    kubernetes, docker, process = (submission(kind, {}) for kind in ("kubernetes", "docker", "process"))
    assert (kubernetes.image, kubernetes.gpu_request) == ("lrgate:latest", {"nvidia.com/gpu": 1})
    assert (docker.image, docker.gpu_request["count"]) == ("lrgate:latest", 1)
    assert kubernetes.command == docker.command == ["prefect", "flow-run", "execute"]
    # Unset: no CUDA_VISIBLE_DEVICES of its own, so the run inherits the worker's.
    assert process.gpu_request == {} and process.env == {}


@pytest.mark.parametrize(
    ("kind", "job", "name", "reason"),
    [
        ("kubernetes", {"gpu_limit": "two"}, "gpu_limit", "is not of type 'integer'"),
        ("kubernetes", {"gpu_limit": -1}, "gpu_limit", "less than the minimum of 0"),
        ("kubernetes", {"gpu_limit": None}, "gpu_limit", "is not of type 'integer'"),
        ("kubernetes", {"gpu_limt": 2}, "gpu_limt", "not declared by this template"),
        ("docker", {"gpu_count": 0}, "gpu_count", "less than the minimum of 1"),
        ("docker", {"shm_size": "lots"}, "shm_size", "does not match"),
        ("process", {"cuda_visible_devices": "gpu1"}, "cuda_visible_devices", "does not match"),
        ("process", {"cuda_visible_devices": 1}, "cuda_visible_devices", "is not of type 'string'"),
    ],
)
def test_a_bad_job_variable_is_refused_naming_it(kind, job, name, reason):
    with pytest.raises(WorkPoolTemplateError, match=f"^job variable '{name}': .*{re.escape(reason)}"):
        submission(kind, job)


def test_a_missing_or_unknown_template_is_refused_naming_it(tmp_path):
    with pytest.raises(WorkPoolTemplateError, match=r"kubernetes\.json: no such file"):
        load_template("kubernetes", tmp_path)
    (tmp_path / "docker.json").write_text("{")
    with pytest.raises(WorkPoolTemplateError, match=r"docker\.json: not valid JSON"):
        load_template("docker", tmp_path)
    with pytest.raises(WorkPoolTemplateError, match="no work pool template for type 'ecs'"):
        load_template("ecs")


def test_the_preview_command_prints_the_submission_or_one_error_line(capsys):
    assert main(["kubernetes", '{"gpu_limit": 2}']) == 0
    assert json.loads(capsys.readouterr().out)["gpu_request"] == {"nvidia.com/gpu": 2}
    assert main(["kubernetes", '{"gpu_limit": "two"}']) == 1
    assert capsys.readouterr().err == "lrgate: error: job variable 'gpu_limit': 'two' is not of type 'integer'\n"


def prefect_default(kind: str) -> dict:
    """Prefect's own default template for ``kind``, as Prefect 3.9.1's server serves it (the collection registry it
    ships), which the templates were made from. Not the installed worker classes': the prefect-docker and
    prefect-kubernetes of the dev extra (for the rendering checks below) are newer and add variables of their own."""
    import prefect.server.api

    registry = Path(prefect.server.api.__file__).parent / "collections_data/views/aggregate-worker-metadata.json"
    workers = [w for collection in json.loads(registry.read_text()).values() for w in collection.values()]
    (found,) = [w["default_base_job_configuration"] for w in workers if w["type"] == kind]
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_each_template_keeps_everything_of_prefects_default(kind):
    from prefect.utilities.templating import find_placeholders

    def placeholders(configuration: dict) -> set[str]:
        return {p.name for p in find_placeholders(json.dumps(configuration))}

    ours, default = load_template(kind), prefect_default(kind)
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])
    # The process template sets an env dict (CUDA_VISIBLE_DEVICES) that the worker merges the `env` variable into.
    dropped = placeholders(default["job_configuration"]) - placeholders(ours["job_configuration"])
    assert dropped == ({"env"} if kind == "process" else set())


def test_the_deployments_job_variables_fit_the_process_template():
    deployments = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    on_process_pool = [d for d in deployments if d["work_pool"]["name"] == "lrgate-gpu"]
    assert on_process_pool
    for deployment in on_process_pool:
        job = deployment["work_pool"].get("job_variables", {})
        # No cuda_visible_devices: the run inherits its worker's CUDA_VISIBLE_DEVICES (one worker per GPU).
        assert render(load_template("process"), job)["env"] == job.get("env", {}), deployment["name"]


def test_the_dockerfile_installs_the_torch_pyproject_caps():
    from packaging.requirements import Requirement

    dockerfile = (ROOT / "Dockerfile").read_text()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    caps = {r.name: s.version for r in map(Requirement, dependencies) for s in r.specifier if s.operator == "<="}
    for package in ("torch", "torchvision"):
        (pinned,) = re.findall(rf"\b{package}==([\w.]+)", dockerfile)
        assert pinned == caps[package], package
    assert not re.search(r"^ENTRYPOINT", dockerfile, re.MULTILINE)  # the worker's command must run as given


def test_prefects_process_worker_builds_the_same_job_and_pins_the_run(prefect_api, monkeypatch):
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.process import ProcessJobConfiguration

    template = load_template("process")
    job = {"cuda_visible_devices": "1", "env": ENV}
    configuration = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, job))
    for key, value in render(template, job).items():
        assert getattr(configuration, key) == value, key

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the worker's own GPUs
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4()))
    assert configuration.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert configuration.env["LRGATE_CONFIG"] == ENV["LRGATE_CONFIG"]
    unpinned = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, {}))
    unpinned.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4()))
    assert unpinned.env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_dot_key_job_variable_merges_into_its_variable_as_prefects_worker_merges_it(prefect_api):
    # prefect/workers/base.py, BaseJobConfiguration.from_template_and_values: each dot key is set inside its
    # variable, the plain keys are deep-merged over that (a plain env's key wins over the same dot key), and the
    # env that results is merged over an env dict the configuration sets itself (process: CUDA_VISIBLE_DEVICES).
    from prefect.workers.process import ProcessJobConfiguration

    template = load_template("process")
    job = {"cuda_visible_devices": "1", "env": ENV, "env.FOO": "bar"}
    assert render(template, job)["env"] == {"CUDA_VISIBLE_DEVICES": "1", **ENV, "FOO": "bar"}
    worker = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, job))
    assert worker.env == render(template, job)["env"]

    assert submission("kubernetes", {"env.FOO": "bar"}).env == {"FOO": "bar"}
    assert submission("docker", {"env.FOO": "bar", "env": ENV}).env == {**ENV, "FOO": "bar"}
    assert submission("docker", {"env.FOO": "bar", "env": {"FOO": "nested"}}).env == {"FOO": "nested"}
    # Checked as the env variable's values are (the server checks no dot key), and named by the key as given.
    with pytest.raises(WorkPoolTemplateError, match=r"^job variable 'env\.FOO': 1 is not of type 'string'$"):
        submission("docker", {"env.FOO": 1})
    with pytest.raises(WorkPoolTemplateError, match=r"^job variable 'evn\.FOO': not declared by this template"):
        submission("docker", {"evn.FOO": "bar"})


def test_rendering_makes_no_prefect_client_and_refuses_what_only_a_server_resolves(monkeypatch):
    import prefect.client.orchestration

    def no_client(*args, **kwargs):
        raise AssertionError("render asked Prefect for a client")

    monkeypatch.setattr(prefect.client.orchestration, "get_client", no_client)
    assert submission("kubernetes", {"gpu_limit": 2}).gpu_request == {"nvidia.com/gpu": 2}
    with pytest.raises(WorkPoolTemplateError, match=r"\{\{ prefect\.variables\.registry }} needs a Prefect server"):
        submission("docker", {"image": "{{ prefect.variables.registry }}/lrgate:1.2"})
    with pytest.raises(WorkPoolTemplateError, match=r"\{\{ prefect\.blocks\.secret\.token }} needs a Prefect server"):
        submission("kubernetes", {"env": {"TOKEN": "{{ prefect.blocks.secret.token }}"}})


EVERY_VARIABLE = {"image": IMAGE, "env": ENV, "env.FOO": "bar", "command": COMMAND}  # and each kind's GPU request


def worker_configuration(cls, kind: str, job: dict, unlike: tuple[str, ...] = ()):
    """``kind``'s template rendered by a worker's own job configuration class ``cls``, after checking that it holds
    what lrgate's :func:`render` gives (but for the keys in ``unlike``); returns it and lrgate's rendering."""
    template = load_template(kind)
    configuration = asyncio.run(cls.from_template_and_values(template, job))
    rendered = render(template, job)
    for key, value in rendered.items():
        if key not in unlike:
            assert getattr(configuration, key) == value, key
    return configuration, rendered


def prepared(configuration):
    """``configuration`` as the worker prepares it for one flow run (Prefect's env, labels, the command)."""
    from prefect.client.schemas.objects import FlowRun

    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4()))
    return configuration


@pytest.mark.parametrize("job", [{}, {**EVERY_VARIABLE, "gpu_count": 2}], ids=["defaults", "set"])
def test_prefect_dockers_worker_submits_the_same_container(prefect_api, job):
    """prefect-docker's own job configuration and container settings: what its worker hands docker-py."""
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    configuration, _ = worker_configuration(DockerWorkerJobConfiguration, "docker", job)

    class Daemon:  # all the worker asks the docker daemon before it creates the container
        def version(self):
            return {"Version": "27.0.0"}

    worker = DockerWorker(work_pool_name="lrgate-docker")
    settings = worker._build_container_settings(Daemon(), prepared(configuration))
    sub = submission("docker", job)
    assert settings["image"] == sub.image
    assert shlex.split(settings["command"]) == sub.command  # docker-py splits a string command with shlex
    assert settings["device_requests"] == [sub.gpu_request] and settings["shm_size"] == "8g"
    assert sub.env.items() <= settings["environment"].items()


@pytest.mark.parametrize("job", [{}, {**EVERY_VARIABLE, "gpu_limit": 2}], ids=["defaults", "set"])
def test_prefect_kubernetes_worker_builds_the_same_job(prefect_api, job):
    """prefect-kubernetes' own job configuration and the manifest its worker would send the cluster."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    # the class adds empty metadata.annotations to the manifest: compare its container
    configuration, rendered = worker_configuration(
        KubernetesWorkerJobConfiguration, "kubernetes", job, unlike=("job_manifest",)
    )
    assert container({"job_manifest": configuration.job_manifest}) == container(rendered)

    job_container = container({"job_manifest": prepared(configuration).job_manifest})
    sub = submission("kubernetes", job)
    assert (job_container["image"], job_container["args"]) == (sub.image, sub.command)
    assert job_container["resources"]["limits"] == sub.gpu_request
    assert all({"name": k, "value": v} in job_container["env"] for k, v in sub.env.items())


@pytest.fixture(scope="module")
def pools(prefect_api):
    """One pool per template, made by `prefect work-pool create --base-job-template` (Prefect's CLI, in-process)."""
    from prefect.testing.cli import invoke_and_assert

    names = {kind: f"lrgate-templates-{kind}" for kind in KINDS}
    for kind, name in names.items():
        invoke_and_assert(
            ["work-pool", "create", name, "--type", kind, "--overwrite"]
            + ["--base-job-template", str(TEMPLATES / f"{kind}.json")],
            expected_output_contains=f"Created work pool {name!r}",
            echo=False,
        )
    return names


def test_a_real_server_takes_each_template_as_the_pools_base_job_template(pools):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for kind, name in pools.items():
            pool = client.read_work_pool(name)
            assert pool.type == kind and pool.base_job_template == load_template(kind), kind


def test_the_server_refuses_a_deployment_with_a_bad_gpu_limit(pools):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("lrgate-templates-check")
        deploy = {"flow_id": flow_id, "name": "gpus", "work_pool_name": pools["kubernetes"]}
        assert client.create_deployment(**deploy, job_variables={"gpu_limit": 2})
        with pytest.raises(PrefectHTTPStatusError, match="gpu_limit") as refused:
            client.create_deployment(**deploy, job_variables={"gpu_limit": "two"})
    assert refused.value.response.status_code == 422
