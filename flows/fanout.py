"""A sharded stage spec + RunnerConfig -> its shards run where the config says: local threads, Ray, or deployment runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from mathfactory.flows.shard import ref, resolve, shard_task
from mathfactory.tasks.stage import Run, StageSpec, logger
from mathfactory.tasks.storage import SECRET_ENV

T = TypeVar("T")


class RunnerConfig(BaseModel):
    """Where the shards of sharded stages run. Not part of a run's identity: outputs do not depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray", "deployment"] = Field(
        "local", description="local: threads in the flow's process; ray: tasks on a Ray cluster (prefect-ray); "
        "deployment: one flow run of `deployment` per shard, on its work pool.")
    max_workers: int = Field(1, ge=1, description="local: shards at once. 1, since every stage already uses all cores.")
    address: str | None = Field(None, description="ray: None starts Ray in-process for each stage; "
                                "'ray://host:10001' joins a cluster (its nodes need mathfactory installed).")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="ray: Ray runtime_env for the shards (pip, working_dir, env_vars); "
        "env_vars given here win over the Prefect API address passed by default.")
    ray_options: dict[str, Any] = Field(default_factory=dict,
                                        description="ray: resources each shard asks for, e.g. {num_gpus: 1}.")
    deployment: str = Field("mathfactory-shard/shard", description="deployment: 'flow/deployment' that runs one "
                            "shard (flows/shard.py); its pool's result storage must be readable here.")
    poll_s: float = Field(5.0, gt=0, description="deployment: seconds between checks of a shard run's state.")


def task_runner(runner: RunnerConfig, shards: int) -> TaskRunner:
    if runner.kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=runner.address, init_kwargs={"runtime_env": ray_runtime_env(runner)})
    # Deployment shards only wait on their runs in these threads; the gpu pool and tag limit decide how many run.
    return ThreadPoolTaskRunner(max_workers=shards if runner.kind == "deployment" else runner.max_workers)


# Where the lake is and how to reach it, by name only: the name of the Prefect Secret block holding the keys and
# the S3 endpoint/region. Keys themselves never travel in a runtime_env (Ray shows it in its dashboard).
LAKE_ENV = (SECRET_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def ray_runtime_env(runner: RunnerConfig) -> dict[str, Any]:
    """The user's runtime_env, plus this flow's Prefect API for the workers (without it each Ray worker starts its
    own temporary Prefect server, slow, and its task runs never reach the UI) and the lake settings in LAKE_ENV."""
    lake = {k: os.environ[k] for k in LAKE_ENV if k in os.environ}
    env = {**lake, **prefect_env(), **runner.runtime_env.get("env_vars", {})}
    return {**runner.runtime_env, "env_vars": env}


def prefect_env() -> dict[str, str]:
    """The API this process talks to (a server, or the ephemeral one it started) and its key, as env vars."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        env = {"PREFECT_API_URL": str(client.api_url).rstrip("/")}
    key = get_current_settings().api.key
    if key is not None:
        env["PREFECT_API_KEY"] = key.get_secret_value()
    return env


def shard_parameters(spec: StageSpec, config: BaseModel, run: Run, shard: int) -> dict[str, Any]:
    """flows/shard.py:run_shard's parameters for one shard (JSON, as a deployment run takes them)."""
    return {"module": ref(spec), "stage": spec.name, "config": config.model_dump(mode="json"),
            "run": run.model_dump(mode="json"), "shard": shard}


def idempotency_key(parameters: dict[str, Any]) -> str:
    """Run, stage and shard, plus a digest of every parameter: a repeated key returns the earlier flow run and
    drops the new parameters, so the same run id in another lake must not share a key."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    return f"{parameters['run']['run_id']}/{parameters['stage']}/{parameters['shard']:05d}/{digest}"


@task(name="shard-run", cache_policy=NO_CACHE, retries=1)
def shard_run(deployment: str, parameters: dict[str, Any], poll_s: float) -> dict:
    """One shard as a flow run of `deployment`, awaited; returns the shard's summary (the run's result)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.states import AwaitingRetry

    key = idempotency_key(parameters)
    try:
        run = run_deployment(deployment, parameters=parameters, idempotency_key=key, timeout=0)
    except ObjectNotFound:
        raise RuntimeError(f"no deployment {deployment!r} on {prefect_env()['PREFECT_API_URL']}: deploy "
                           "infra/prefect.yaml (`mathfactory deploy`), or set runner.deployment") from None
    if run.state is not None and run.state.is_final() and not run.state.is_completed():
        # The key's run failed earlier (a previous attempt or pipeline run): re-run that same flow run, as the
        # UI's Retry does; its shard's part file, if written, is kept.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, AwaitingRetry(message="retried by mathfactory's fan-out"), force=True)
    run = run_deployment(deployment, parameters=parameters, idempotency_key=key, poll_interval=poll_s,
                         as_subflow=False)  # same key: waits on the same run
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"shard run {run.name} ({key}) ended {state.name if state else 'without a state'}: "
                           f"{state.message if state else ''}")
    return state.result()


@flow(name="mathfactory-fan-out")
def fan_out(module: str, stage: str, config: dict[str, Any], run: Run, runner: RunnerConfig) -> list[dict]:
    """Every shard of a sharded stage (declared in `module`), on this flow's task runner (chosen by `runner`);
    their summaries in shard order."""
    spec = resolve(module, stage)
    cfg = spec.config_type.model_validate(config)
    shards = range(spec.n_shards(cfg, run))
    if runner.kind == "deployment":
        futures = [shard_run.submit(runner.deployment, shard_parameters(spec, cfg, run, s), runner.poll_s)
                   for s in shards]
    else:
        task = shard_task.with_options(retries=spec.retries)
        with ray_options(runner):
            futures = [task.submit(ref(spec), spec.name, config, run, s) for s in shards]
    track(futures, f"{run.run_id}-{spec.name}-progress", spec.name)
    return [f.result() for f in futures]


def track(futures: list[PrefectFuture], key: str, stage: str) -> None:
    """Wait for every shard, keeping a progress artifact (the UI's Artifacts page, under `key`) at the share that
    has finished."""
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower())  # artifact keys: lowercase letters, digits and dashes
    total = len(futures)
    artifact = create_progress_artifact(0.0, key=key, description=f"{stage}: 0 of {total} shards finished")
    for done, _ in enumerate(as_completed(futures), start=1):  # a failed shard fails the stage after this
        update_progress_artifact(artifact, 100.0 * done / total, f"{stage}: {done} of {total} shards finished")


def ray_options(runner: RunnerConfig) -> contextlib.AbstractContextManager:
    if runner.kind != "ray" or not runner.ray_options:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(**runner.ray_options)


def run_sharded(runner: RunnerConfig, spec: StageSpec, config: BaseModel, run: Run) -> list[dict]:
    """Every shard of a sharded stage in a subflow whose task runner `runner` picks (a flow's runner is fixed when
    it is decorated, hence with_options); the shards' summaries."""
    if "://" not in run.lake:  # Ray workers and deployment runs have other working directories
        run = run.model_copy(update={"lake": os.path.abspath(run.lake)})
    subflow = fan_out.with_options(task_runner=task_runner(runner, spec.n_shards(config, run)),
                                   flow_run_name=f"{run.run_id}-{spec.name}-{runner.kind}")
    call = lambda: subflow(ref(spec), spec.name, config.model_dump(mode="json"), run, runner)  # noqa: E731
    return retry_connect(call, RAY_CONNECT_ATTEMPTS if runner.kind == "ray" else 1,
                         f"{spec.name} on {runner.address}")


# A Ray client's connect can fail while the head is busy (its per-client server does not come up in time);
# shards that landed are kept by every shard task, so connecting again and re-running the fan-out is safe.
RAY_CONNECT_ATTEMPTS = 3


def retry_connect(call: Callable[[], T], attempts: int, what: str, wait_s: float = 5.0) -> T:
    for attempt in range(1, attempts):
        try:
            return call()
        except ConnectionError as e:
            logger().warning(f"{what}: connecting failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             f"attempt {attempt + 1} of {attempts} in {wait_s * attempt:.0f} s")
            time.sleep(wait_s * attempt)
    return call()
