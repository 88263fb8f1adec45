"""A stage spec + RunnerConfig -> its units (the shards of a sharded stage, or the one training of a model stage)
run where the config says: local threads, Ray tasks, or runs of a deployment. A stage that needs a GPU goes where
the GPUs are (Ray tasks asking for them, the `gpu` pool's jobs); one that needs a CPU never takes a GPU."""

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
from mathfactory.flows.training import train_task
from mathfactory.tasks.stage import Run, StageSpec, logger
from mathfactory.tasks.storage import SECRET_ENV

T = TypeVar("T")


class RunnerConfig(BaseModel):
    """Where the shards of sharded stages and the trainings of model stages run. Not part of a run's identity:
    outputs do not depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray", "deployment"] = Field(
        "local", description="local: shards in threads of the flow's process, trainings in its own run; ray: tasks "
        "on a Ray cluster (prefect-ray); deployment: one flow run of `deployment` per shard and of "
        "`train_deployment` per training, on their work pool. Stages that need no GPU (verdicts) run in the "
        "flow's process under `deployment`, and ask Ray for no GPU.")
    max_workers: int = Field(1, ge=1, description="Shards at once in the flow's process (local, and stages that "
                             "need no GPU under deployment). 1, since every stage already uses all cores.")
    address: str | None = Field(None, description="ray: None starts Ray in-process for each stage; "
                                "'ray://host:10001' joins a cluster (its nodes need mathfactory installed).")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="ray: Ray runtime_env for the shards (pip, working_dir, env_vars); "
        "env_vars given here win over the Prefect API address passed by default.")
    ray_options: dict[str, Any] = Field(default_factory=dict, description="ray: resources each shard of a stage "
                                        "that needs a GPU asks for, e.g. {num_gpus: 1}; a training asks for "
                                        "num_gpus times its GPUs (train.num_processes).")
    deployment: str = Field("mathfactory-shard/shard", description="deployment: 'flow/deployment' that runs one "
                            "shard (flows/shard.py); its pool's result storage must be readable here.")
    train_deployment: str = Field("mathfactory-train/train", description="deployment: 'flow/deployment' that "
                                  "runs one training (flows/training.py); its job variable gpu_count is set to "
                                  "the GPUs the training asks for.")
    poll_s: float = Field(5.0, gt=0, description="deployment: seconds between checks of a shard or training run.")


def trains_away(runner: RunnerConfig, spec: StageSpec, config: BaseModel) -> bool:
    """Whether a model stage trains away from the flow's own run: where the GPUs are (a Ray task, a run on the
    gpu pool), when the runner is not local and the training asks for a GPU."""
    return spec.record is None and runner.kind != "local" and spec.gpus_for(config) > 0


def on_gpu_pool(runner: RunnerConfig, spec: StageSpec, config: BaseModel) -> bool:
    return runner.kind == "deployment" and spec.gpus_for(config) > 0


def task_runner(runner: RunnerConfig, spec: StageSpec, config: BaseModel, units: int) -> TaskRunner:
    if runner.kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=runner.address, init_kwargs={"runtime_env": ray_runtime_env(runner)})
    # Deployment runs are only waited on in these threads; the gpu pool and tag limit decide how many run.
    return ThreadPoolTaskRunner(max_workers=units if on_gpu_pool(runner, spec, config) else runner.max_workers)


def ray_resources(runner: RunnerConfig, spec: StageSpec, config: BaseModel) -> dict[str, Any]:
    """What one unit asks Ray for: a stage that needs no GPU, Ray's default (one CPU); else `ray_options`, a
    training's num_gpus times the GPUs it asks for."""
    gpus = spec.gpus_for(config)
    if not gpus:
        return {}
    if spec.record is None and "num_gpus" in runner.ray_options:
        return {**runner.ray_options, "num_gpus": runner.ray_options["num_gpus"] * gpus}
    return dict(runner.ray_options)


def job_variables(spec: StageSpec, config: BaseModel) -> dict[str, Any]:
    """The gpu pool job variables of one unit's run: its GPUs (infra/gpu-job-template.json's gpu_count)."""
    return {"gpu_count": spec.gpus_for(config)}


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


def shard_parameters(spec: StageSpec, config: BaseModel, run: Run, shard: int | None) -> dict[str, Any]:
    """The parameters of flows/shard.py:run_shard for one shard, or of flows/training.py:run_training for a model
    stage's training (shard None): JSON, as a deployment run takes them."""
    params = {"module": ref(spec), "stage": spec.name, "config": config.model_dump(mode="json"),
              "run": run.model_dump(mode="json")}
    return params if shard is None else {**params, "shard": shard}


def idempotency_key(parameters: dict[str, Any]) -> str:
    """Run, stage and shard (if any), plus a digest of every parameter: a repeated key returns the earlier flow
    run and drops the new parameters, so the same run id in another lake must not share a key."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    shard = f"/{parameters['shard']:05d}" if "shard" in parameters else ""
    return f"{parameters['run']['run_id']}/{parameters['stage']}{shard}/{digest}"


@task(name="deployment-run", cache_policy=NO_CACHE, retries=1)
def deployment_run(deployment: str, parameters: dict[str, Any], poll_s: float,
                   variables: dict[str, Any] | None = None) -> dict:
    """One shard or training as a flow run of `deployment` (with job variables `variables`), awaited; returns its
    summary (the run's result)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.states import AwaitingRetry

    key = idempotency_key(parameters)
    try:
        run = run_deployment(deployment, parameters=parameters, idempotency_key=key, timeout=0,
                             job_variables=variables)
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
        raise RuntimeError(f"{deployment} run {run.name} ({key}) ended {state.name if state else 'without a state'}: "
                           f"{state.message if state else ''}")
    return state.result()


def units(spec: StageSpec, config: BaseModel, run: Run) -> list[int | None]:
    """A sharded stage's shards, or a model stage's one training (None)."""
    return list(range(spec.n_shards(config, run))) if spec.record is not None else [None]


@flow(name="mathfactory-fan-out")
def fan_out(module: str, stage: str, config: dict[str, Any], run: Run, runner: RunnerConfig) -> list[dict]:
    """Every shard of a sharded stage, or the training of a model stage (declared in `module`), on this flow's
    task runner (chosen by `runner`); their summaries in shard order."""
    spec = resolve(module, stage)
    cfg = spec.config_type.model_validate(config)
    if on_gpu_pool(runner, spec, cfg):
        deployment = runner.deployment if spec.record is not None else runner.train_deployment
        # A lost run (an evicted pod) is re-run once, but never a training whose stage says no retries: its
        # failures (a set too small, out of memory) would only repeat, at a GPU's price.
        remote_run = deployment_run.with_options(retries=min(spec.retries, 1))
        futures = [remote_run.submit(deployment, shard_parameters(spec, cfg, run, u), runner.poll_s,
                                     job_variables(spec, cfg)) for u in units(spec, cfg, run)]
    else:
        task = (shard_task if spec.record is not None else train_task).with_options(retries=spec.retries)
        with ray_options(runner, spec, cfg):
            futures = [task.submit(ref(spec), spec.name, config, run, *([] if u is None else [u]))
                       for u in units(spec, cfg, run)]
    if spec.record is not None:
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


def ray_options(runner: RunnerConfig, spec: StageSpec, config: BaseModel) -> contextlib.AbstractContextManager:
    resources = ray_resources(runner, spec, config) if runner.kind == "ray" else {}
    if not resources:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(**resources)


def dispatch(runner: RunnerConfig, spec: StageSpec, config: BaseModel, run: Run) -> list[dict]:
    """Every unit of a stage (its shards, or its training) in a subflow whose task runner `runner` picks (a flow's
    runner is fixed when it is decorated, hence with_options); their summaries."""
    if "://" not in run.lake:  # Ray workers and deployment runs have other working directories
        run = run.model_copy(update={"lake": os.path.abspath(run.lake)})
    subflow = fan_out.with_options(task_runner=task_runner(runner, spec, config, len(units(spec, config, run))),
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
