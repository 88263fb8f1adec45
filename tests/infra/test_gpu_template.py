"""infra/gpu-job-template.json -> the Kubernetes Job a `gpu` pool worker would submit, rendered offline."""

import asyncio
import json
import uuid
from pathlib import Path

import jsonschema
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import WorkPoolCreate
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from mathfactory.flows.fanout import job_variables
from mathfactory.tasks import trainer
from mathfactory.tasks.train import SPECS as TRAININGS
from mathfactory.tasks.train import TrainConfig

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "gpu-job-template.json"


class NoAPI:
    """Stands in for the Prefect client: rendering a template without block or variable references never
    calls it, and this makes sure of that (no server is started)."""

    def __getattr__(self, name):
        raise AssertionError(f"the template needed the Prefect API ({name})")


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def render(template: dict, **values) -> dict:
    """The Job manifest for one flow run of a deployment with job variables `values`."""
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values, client=NoAPI()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="gpu-run", flow_id=uuid.uuid4()))
    return config.job_manifest


def container(manifest: dict) -> dict:
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    return c


def test_the_server_accepts_it_as_a_kubernetes_pool_template(template):
    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)  # raises on undeclared variables


def test_it_extends_prefect_kubernetes_default(template):
    """Every variable of the installed prefect-kubernetes default is still there, so an upgrade that adds one
    shows up here instead of as a field missing from the UI form."""
    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    assert set(default["job_configuration"]) == set(template["job_configuration"])


def test_default_job_requests_one_gpu_on_a_gpu_node_with_the_gpu_image(template):
    manifest = render(template)
    c = container(manifest)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert c["image"] == "mathfactory-gpu:latest"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert manifest["metadata"]["namespace"] == "mathfactory"
    # The worker starts the run as args under the image's own entrypoint (see test_dockerfiles).
    assert "command" not in c and c["args"][:3] == ["prefect", "flow-run", "execute"]


def test_overrides_reach_the_manifest(template):
    manifest = render(template, gpu_count=4, image="registry.example.com/mathfactory-gpu:0.1.0",
                      node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, tolerations=[],
                      shm_size="32Gi", lake_secret="team-lake", env={"MATHFACTORY_STORAGE_SECRET": "lake-keys"})
    c = container(manifest)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "4"
    assert c["image"] == "registry.example.com/mathfactory-gpu:0.1.0"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == []
    (shm,) = pod["volumes"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["envFrom"] == [{"secretRef": {"name": "team-lake", "optional": True}}]
    assert {"name": "MATHFACTORY_STORAGE_SECRET", "value": "lake-keys"} in c["env"]


@pytest.mark.parametrize("gpus", [1, 4])
def test_a_training_runs_job_requests_the_gpus_the_training_was_given(template, gpus):
    """What the deployment runner sets on a `train` run (flows/fanout.py:job_variables) reaches the Job: a
    training over `gpus` processes (accelerate launch past one) asks Kubernetes for that many GPUs."""
    spec, cfg = TRAININGS["train_dpo"], TrainConfig(num_processes=gpus)
    variables = job_variables(spec, cfg)
    jsonschema.validate(variables, {**template["variables"], "required": []})  # what the server checks
    c = container(render(template, **variables))
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == str(gpus)
    assert (trainer.command(Path("job.json"), gpus)[1:3] == ["-m", "accelerate.commands.launch"]) == (gpus > 1)


def test_the_template_holds_no_credentials(template):
    text = json.dumps(template).lower()
    assert "aws_secret_access_key" not in template["job_configuration"]["env"] and "password" not in text
    assert template["variables"]["properties"]["lake_secret"]["default"] == "mathfactory-lake"  # a name, not a key


@pytest.mark.parametrize(("variables", "ok"), [
    ({"gpu_count": 4}, True),
    ({"gpu_count": 0}, False),  # a job on the gpu pool that asks for no GPU is a mistake, not a CPU job
    ({"gpu_count": "4"}, False),
    ({"tolerations": {"key": "x"}}, False),
    ({"node_selector": {"pool": "a100"}}, True),
])
def test_job_variables_are_checked_against_the_form(template, variables, ok):
    """What the server checks when a deployment or run sets job variables."""
    schema = {**template["variables"], "required": []}
    if ok:
        jsonschema.validate(variables, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(variables, schema)
