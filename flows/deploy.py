"""infra/prefect.yaml + this checkout -> work pools, the `gpu` tag limit and the deployments on a Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "infra" / "prefect.yaml"
GPU_TEMPLATE = REPO / "infra" / "gpu-job-template.json"
AUTOMATIONS = REPO / "infra" / "automations.yaml"
POOLS = {"cpu": "process", "gpu": "kubernetes"}
# Tasks tagged `gpu` share this many slots (Prefect's tag concurrency limit): one per GPU in the cluster.
GPU_TAG = "gpu"


class DeployError(RuntimeError):
    """Something the user must fix (an unreachable API, a pool of the wrong type); the message is one line."""


def api_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeployError("PREFECT_API_URL is not set: point it at a Prefect server, e.g. "
                          "http://127.0.0.1:4200/api (`prefect server start` serves one)")
    return url


@contextmanager
def connect() -> Iterator[Any]:
    """A sync client to the API in PREFECT_API_URL, after checking that the server answers."""
    import httpx
    from prefect.client.orchestration import get_client

    url = api_url()
    try:  # one plain request: the client's own retries would spend a minute on a refused connection
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as e:
        raise DeployError(f"cannot reach the Prefect API at {url} ({type(e).__name__}: {e})") from None
    with get_client(sync_client=True) as client:
        yield client


def default_template(pool_type: str) -> dict:
    from prefect.workers.base import BaseWorker

    worker = BaseWorker.get_worker_class_from_type(pool_type)
    if worker is None:
        extra = " (pip install prefect-kubernetes, or mathfactory[scale])" if pool_type == "kubernetes" else ""
        raise DeployError(f"no Prefect worker type {pool_type!r} is installed{extra}")
    return worker.get_default_base_job_template()


def ensure_pool(client: Any, name: str, pool_type: str, template: dict | None) -> str:
    """Create the pool, or update its base job template in place; never changes an existing pool's type."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type,
                                               base_job_template=template or default_template(pool_type)))
        return "created"
    if pool.type != pool_type:
        raise DeployError(f"work pool {name!r} exists with type {pool.type!r}, expected {pool_type!r}: "
                          f"delete it (prefect work-pool delete {name}) or rename it")
    if template is not None and template != pool.base_job_template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return "updated"
    return "unchanged"


def gpu_template() -> tuple[dict | None, str]:
    """The gpu pool's base job template (requests nvidia.com/gpu) when the checkout has one, and where from."""
    if not GPU_TEMPLATE.is_file():
        return None, (f"Prefect's default Kubernetes job template ({GPU_TEMPLATE.relative_to(REPO)} not found, "
                      "so its jobs request no GPU)")
    try:
        return json.loads(GPU_TEMPLATE.read_text()), str(GPU_TEMPLATE.relative_to(REPO))
    except json.JSONDecodeError as e:
        raise DeployError(f"{GPU_TEMPLATE}: not JSON ({e})") from None


def ensure_automations(client: Any, crash_after: float | None = None) -> list[str]:
    """infra/automations.yaml on the server, created or updated by name; `crash_after` overrides the zombie
    automation's `within`. Returns one line per automation."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    lines = []
    for spec in yaml.safe_load(AUTOMATIONS.read_text())["automations"]:
        if crash_after is not None and spec["trigger"].get("posture") == "Proactive":
            spec["trigger"]["within"] = crash_after
        automation = AutomationCore.model_validate(spec)
        found = client.read_automations_by_name(automation.name)
        for extra in found[1:]:  # one per name, so a rename by hand cannot leave two crashing runs
            client.delete_automation(extra.id)
        if not found:
            client.create_automation(automation)
            lines.append(f"automation {automation.name}: created")
        elif AutomationCore.model_validate(found[0].model_dump(include=set(AutomationCore.model_fields))) != automation:
            client.update_automation(found[0].id, automation)
            lines.append(f"automation {automation.name}: updated")
        else:
            lines.append(f"automation {automation.name}: unchanged")
    return lines


def deploy(gpus: int = 1, checkout: str | Path = REPO, nightly_policy: str | None = None,
           crash_after: float | None = None, echo: Callable[[str], None] = print) -> list[str]:
    """Pools, the gpu limit, the automations, then `prefect deploy --all` on infra/prefect.yaml. Idempotent: reruns update in place.
    Returns the deployments' full names."""
    import yaml
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    template, origin = gpu_template()
    with connect() as client:
        echo(f"work pool cpu ({POOLS['cpu']}): {ensure_pool(client, 'cpu', POOLS['cpu'], None)}")
        echo(f"work pool gpu ({POOLS['gpu']}): {ensure_pool(client, 'gpu', POOLS['gpu'], template)}, "
             f"base job template: {origin}")
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpus)  # an upsert on the server
        echo(f"concurrency limit: tasks tagged {GPU_TAG!r} share {gpus} slot(s)")
        for line in ensure_automations(client, crash_after):
            echo(line)

        # MATHFACTORY_HOME stays unset so the pull step resolves it per pool at run time (see prefect.yaml).
        env = {k: v for k, v in os.environ.items() if k != "MATHFACTORY_HOME"}
        env.update(MATHFACTORY_CHECKOUT=str(Path(checkout).resolve()), MATHFACTORY_NIGHTLY_POLICY=nightly_policy or "")
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
             "--prefect-file", str(PREFECT_FILE.relative_to(REPO))],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise DeployError("prefect deploy failed:\n" + "\n".join(tail))
        declared = [d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]]
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=declared)))
        names = sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in deployments)
    echo(f"deployments: {', '.join(names)} (cpu workers run the checkout {env['MATHFACTORY_CHECKOUT']})")
    if not nightly_policy:
        echo("nightly-refresh has no model to sample with: its runs refuse until you redeploy with "
             "--nightly-policy URL")
    echo("start a worker: prefect worker start --pool cpu")
    return names
