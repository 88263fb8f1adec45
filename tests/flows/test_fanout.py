"""Where shards and trainings run: the tiny pipeline's sharded stages and pi_sft on a real Ray head (ray://) and as
deployment runs on a process worker give the same rows as the local runner; a method trained on Ray (asking for
a GPU) and on the worker lands in an S3 lake and is read back; the deployment parameters and keys; a failed shard
run is re-run in place; what each stage needs and where that sends it."""

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from pydantic import ValidationError
from support import REPO, TINY_PRESET, toy_training_sets

from mathfactory.flows import fanout
from mathfactory.flows.config import FactoryConfig, load_preset
from mathfactory.flows.executor import execute
from mathfactory.flows.fanout import (
    LAKE_ENV,
    RunnerConfig,
    idempotency_key,
    ray_resources,
    ray_runtime_env,
    retry_connect,
    shard_parameters,
    trains_away,
)
from mathfactory.flows.pipeline import pipeline
from mathfactory.flows.shard import resolve, run_shard
from mathfactory.flows.training import run_training
from mathfactory.tasks.core.cores import threads_per_job
from mathfactory.tasks.core.records import Rollout, SFTExample, Verdict
from mathfactory.tasks.credit import CREDIT
from mathfactory.tasks.evaluate import SPECS as EVALUATIONS
from mathfactory.tasks.evaluate import eval_stage
from mathfactory.tasks.influence import FEATURES_SPEC
from mathfactory.tasks.policy import POLICY
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.synthesis import SynthesisConfig
from mathfactory.tasks.synthesize import OUTPUTS
from mathfactory.tasks.synthesizer import SPECS as SYNTHESIZERS
from mathfactory.tasks.train import SPECS as TRAIN_SPECS
from mathfactory.tasks.train import TrainConfig, stage_name
from mathfactory.tasks.trainer import check_model_dir, usable_cores
from mathfactory.tasks.verify import VERDICTS

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray binds the interface address, not loopback
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
POOL = "gpu-process"  # a process stand-in for the Kubernetes `gpu` pool, which cannot run here
WORKER_JOBS = 2
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.2)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to our own process; after `grace`, SIGKILL to its session (ours: started with a new session)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rows(lake: str, run_id: str) -> tuple[list[Rollout], list[Verdict]]:
    lk = Lake(lake)
    key = lambda r: r.rollout_id  # noqa: E731
    return sorted(lk.read(run_id, "rollouts", Rollout), key=key), sorted(lk.read(run_id, "verdicts", Verdict), key=key)


@pytest.fixture(scope="module")
def tiny():
    return load_preset(str(TINY_PRESET))


@pytest.fixture(scope="module")
def lake_path(tmp_path_factory) -> Path:
    """Every runner's run lands at this one path, each moved aside after: a rollout names its policy by the
    policy's lake path, so runs in different places could never share rollout ids."""
    return tmp_path_factory.mktemp("fanout") / "lake"


def run_and_move_aside(cfg, lake_path: Path, kind: str) -> tuple[list[Rollout], list[Verdict], float]:
    cfg = cfg.model_copy(update={"lake": str(lake_path)})
    t0 = time.perf_counter()
    try:
        run_id = pipeline(config=cfg)["run_id"]
        seconds = time.perf_counter() - t0
        return *rows(cfg.lake, run_id), seconds
    finally:  # even after a failure, so the next runner starts from an empty lake
        lake_path.rename(lake_path.with_name(f"lake-{kind}"))


@pytest.fixture(scope="module")
def local_run(prefect_api, tiny, lake_path):
    return run_and_move_aside(tiny, lake_path, "local")


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A single-node Ray head on loopback (`ray start --block`, so it is one process of ours to stop), its
    client address, and its temp dir. Ports are free ones, so a head someone else runs is never touched. It
    declares one GPU (Ray only counts it; a task given it sees CUDA_VISIBLE_DEVICES=0 and trains on the CPU),
    and its workers hold the S3 test keys (s3_server puts them in this environment first)."""
    client_port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    with open(Path(temp) / "head.log", "w") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
             f"--ray-client-server-port={client_port}", f"--dashboard-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", "--num-gpus=1",
             "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}"],
            env={**os.environ, **RAY_ENV}, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    try:
        wait_for(lambda: head.poll() is not None or port_open(client_port), "the Ray head")
        assert head.poll() is None, (Path(temp) / "head.log").read_text()[-2000:]
        print(f"\nRay head up in {time.perf_counter() - t0:.1f} s")
        yield f"ray://127.0.0.1:{client_port}", Path(temp)
    finally:
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_runner_gives_the_local_runners_rows(prefect_api, tiny, lake_path, local_run, ray_head):
    address, temp = ray_head
    ray = RunnerConfig(kind="ray", address=address, ray_options={"num_cpus": 1})
    try:
        rollouts, verdicts, seconds = run_and_move_aside(tiny.model_copy(update={"runner": ray}), lake_path, "ray")
    except Exception as e:  # the head's logs go before its temp dir does
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in temp.glob("session_*/logs/ray_client_server*")}
        raise AssertionError(f"the Ray run failed; the head's client-server logs: {logs}") from e
    print(f"\ntiny pipeline: local {local_run[2]:.1f} s, ray {seconds:.1f} s")
    assert len(rollouts) == len(verdicts) == 2 * 2 * 6
    assert rollouts == local_run[0]
    assert verdicts == local_run[1]
    assert stage_metrics(lake_path, "ray", tiny.run_id()) == stage_metrics(lake_path, "local", tiny.run_id())
    # The shards ran in Ray workers, and reported to this session's Prefect API rather than servers of their own.
    worker_logs = "".join(p.read_text(errors="replace") for p in temp.glob("session_*/logs/worker-*"))
    assert all(worker_logs.count(f"{stage}-shard") >= 2 for stage in ("rollouts", "verdicts", "credit"))
    shards = shard_task_runs("-ray")
    assert sorted(t.name.rsplit("-", 1)[0] for t in shards) == ["credit-shard"] * 2 + ["eval_sft-shard"] * 2 + [
        "policy"] + ["rollouts-shard"] * 2 + ["verdicts-shard"] * 2  # pi_sft trained in a Ray task too
    assert all(t.state.is_completed() for t in shards)

    # Finished stages start no workers: a rerun pointed at a Ray address nobody serves still completes.
    nowhere = tiny.model_copy(update={"lake": str(lake_path.with_name("lake-ray")),
                                      "runner": RunnerConfig(kind="ray", address=f"ray://127.0.0.1:{free_port()}")})
    assert pipeline(config=nowhere)["run_id"] == tiny.run_id()


def shard_task_runs(suffix: str) -> list:
    """Task runs, as this session's API saw them, of the fan-out subflows whose name ends with `suffix`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        fan_outs = [r.id for r in client.read_flow_runs() if r.name.endswith(suffix)]
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=fan_outs)))


# -- the deployment runner -------------------------------------------------------------------------------------


def test_shard_parameters_fit_the_shard_flow_and_key_every_input(tiny):
    run = Run(lake="/lake", run_id="tiny-1", seed=7, grading=tiny.verify)
    params = shard_parameters(ROLLOUTS, tiny.sample, run, 1)
    assert set(params) == set(inspect.signature(run_shard.fn).parameters)
    assert json.loads(json.dumps(params)) == params  # a deployment run's parameters are JSON
    assert resolve(params["module"], params["stage"]) is ROLLOUTS  # what the shard flow finds and runs
    assert ROLLOUTS.config_type.model_validate(params["config"]) == tiny.sample
    assert Run.model_validate(params["run"]) == run

    key = idempotency_key(params)
    assert key.startswith("tiny-1/rollouts/00001/") and key == idempotency_key(dict(params))
    others = [{**params, "shard": 0}, {**params, "stage": "verdicts"},
              {**params, "run": {**params["run"], "lake": "s3://b/lake"}},
              {**params, "run": {**params["run"], "grading": {"timeout_s": 1.0, "workers": 2}}},
              {**params, "config": {**params["config"], "n": 3}}]
    assert len({key, *map(idempotency_key, others)}) == 1 + len(others)

    training = shard_parameters(POLICY, tiny.policy, run, None)  # a model stage's one training: no shard
    assert set(training) == set(inspect.signature(run_training.fn).parameters)
    assert resolve(training["module"], training["stage"]) is POLICY
    assert idempotency_key(training).startswith("tiny-1/policy/")


def test_a_shard_finds_its_stage_by_module_and_name():
    for spec in (ROLLOUTS, VERDICTS, CREDIT, EVALUATIONS["eval_dpo"], FEATURES_SPEC, OUTPUTS):
        assert spec.sharded and resolve(spec.compute.__module__, spec.name) is spec
    # The synthesis stages take the synthesis config whole and read their part of it.
    assert FEATURES_SPEC.config_type is OUTPUTS.config_type is SynthesisConfig
    with pytest.raises(ValueError, match="declares no stage 'policy'; it declares: rollouts"):
        resolve("mathfactory.tasks.sample", "policy")
    with pytest.raises(ValueError, match="is not a stage module"):
        resolve("os", "rollouts")


def test_the_runner_is_configured_but_is_not_part_of_the_run(tiny):
    ray = load_preset(str(TINY_PRESET), ["runner.kind=ray", "runner.address=ray://head:10001"])
    assert ray.runner == RunnerConfig(kind="ray", address="ray://head:10001")
    assert ray.run_id() == tiny.run_id()
    with pytest.raises(ValidationError):
        RunnerConfig(kind="dask")
    with pytest.raises(ValidationError):
        RunnerConfig(adress="ray://head:10001")


def test_a_failed_connect_is_retried_a_bounded_number_of_times():
    calls = []

    def connect_fails(times: int):
        def call():
            calls.append(1)
            if len(calls) <= times:
                raise ConnectionAbortedError("Initialization failure from server:\nStarting Ray client server failed")
            return ["shard summaries"]
        return call

    assert retry_connect(connect_fails(2), 3, "credit", wait_s=0) == ["shard summaries"] and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionAbortedError):
        retry_connect(connect_fails(3), 3, "credit", wait_s=0)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):  # only connection failures are retried
        retry_connect(lambda: calls.append(1) or int("x"), 3, "credit", wait_s=0)
    assert len(calls) == 1


def test_each_stage_says_what_it_needs_and_the_runner_honours_it(tiny):
    """Sampling and training need a GPU, grading does not: on Ray a verdicts shard asks for Ray's default (one
    CPU), a training for its GPUs; a policy that is only referenced trains nothing and stays in the flow's run."""
    gpu = [ROLLOUTS, CREDIT, *EVALUATIONS.values(), FEATURES_SPEC, OUTPUTS, POLICY, *TRAIN_SPECS.values(),
           *SYNTHESIZERS.values()]
    assert VERDICTS.needs == "cpu" and all(spec.needs == "gpu" for spec in gpu)
    ray = RunnerConfig(kind="ray", ray_options={"num_gpus": 1})
    assert ray_resources(ray, VERDICTS, tiny.verify) == {}
    assert ray_resources(ray, ROLLOUTS, tiny.sample) == {"num_gpus": 1}
    assert ray_resources(ray, TRAIN_SPECS["train_dpo"], TrainConfig(num_processes=4)) == {"num_gpus": 4}
    assert ray_resources(RunnerConfig(kind="ray", ray_options={"num_cpus": 1}), POLICY, tiny.policy) == {"num_cpus": 1}
    pretrained = tiny.policy.model_copy(update={"pretrained": "s3://models/m"})
    for runner in (ray, RunnerConfig(kind="deployment")):
        assert trains_away(runner, POLICY, tiny.policy) and not trains_away(runner, POLICY, pretrained)
    assert not trains_away(RunnerConfig(), POLICY, tiny.policy)  # local: in the flow's run, as ever


def test_ray_workers_get_this_api_and_the_users_runtime_env(prefect_api, monkeypatch):
    for key in LAKE_ENV:
        monkeypatch.delenv(key, raising=False)
    with get_client(sync_client=True) as client:
        api = str(client.api_url).rstrip("/")
    env = ray_runtime_env(RunnerConfig(kind="ray", runtime_env={"pip": ["x"], "env_vars": {"A": "1"}}))
    assert env == {"pip": ["x"], "env_vars": {"PREFECT_API_URL": api, "A": "1"}}
    mine = ray_runtime_env(RunnerConfig(kind="ray", runtime_env={"env_vars": {"PREFECT_API_URL": "http://x/api"}}))
    assert mine["env_vars"]["PREFECT_API_URL"] == "http://x/api"


def test_ray_workers_find_the_lake_by_name_but_get_no_keys(prefect_api, monkeypatch):
    monkeypatch.setenv("MATHFACTORY_STORAGE_SECRET", "lake-keys")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-ship")
    env = ray_runtime_env(RunnerConfig(kind="ray"))["env_vars"]
    assert env["MATHFACTORY_STORAGE_SECRET"] == "lake-keys" and env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "do-not-ship" not in str(env)


@pytest.fixture(scope="module")
def shard_worker(prefect_api, s3_server, tmp_path_factory) -> Path:
    """The `shard` and `train` entries of infra/prefect.yaml deployed by `prefect deploy` onto a process pool, and
    a process worker polling it every second, started as the runbook says (`mathfactory worker --jobs 2`: two
    flow runs at once, each trainer with its share of the cores), with the S3 test endpoint and keys. Returns
    the worker's TMPDIR."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        env = {**os.environ, "PREFECT_API_URL": str(client.api_url).rstrip("/")}
        env.pop("MATHFACTORY_HOME", None)  # resolved where the run starts, as a gpu image sets its own
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    for name in ("shard", "train"):  # one at a time: with several names, prefect deploy ignores --pool
        deploy = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", name,
             "--pool", POOL], cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    tmp = tmp_path_factory.mktemp("worker")
    with open(tmp / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [str(BIN / "mathfactory"), "worker", "--pool", POOL, "--jobs", str(WORKER_JOBS), "--type", "process"],
            env={**env, "MATHFACTORY_HOME": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "1", "TMPDIR": str(tmp),
                 "AWS_ENDPOINT_URL_S3": s3_server, "MATHFACTORY_CACHE": str(tmp / "cache")},
            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield tmp
        finally:
            stop(worker)


@pytest.fixture(scope="module")
def deployment_run(prefect_api, tiny, lake_path, local_run, shard_worker):
    runner = RunnerConfig(kind="deployment", poll_s=1)
    return run_and_move_aside(tiny.model_copy(update={"runner": runner}), lake_path, "deployment")


def test_deployment_runner_gives_the_local_runners_rows(tiny, lake_path, local_run, deployment_run):
    rollouts, verdicts, seconds = deployment_run
    print(f"\ntiny pipeline: local {local_run[2]:.1f} s, deployment runs {seconds:.1f} s")
    assert len(rollouts) == len(verdicts) == 2 * 2 * 6
    assert rollouts == local_run[0]
    assert verdicts == local_run[1]

    assert stage_metrics(lake_path, "deployment", tiny.run_id()) == stage_metrics(lake_path, "local", tiny.run_id())

    # Where the run was made, before it was moved aside; every shard gets the run's grading settings.
    run = Run(lake=str(lake_path), run_id=tiny.run_id(), seed=tiny.seed, grading=tiny.verify)
    # Verdicts only grade: they ran in this process and took no gpu slot.
    expected = {idempotency_key(shard_parameters(spec, cfg, run, s))
                for spec, cfg in ((ROLLOUTS, tiny.sample), (CREDIT, tiny.credit),
                                  (EVALUATIONS["eval_sft"], tiny.evaluate))
                for s in range(2)}
    runs = deployment_flow_runs(SHARDS)
    assert {r.idempotency_key for r in runs} == expected
    (trained,) = [r for r in deployment_flow_runs(TRAININGS) if r.parameters["run"]["lake"] == str(lake_path)]
    assert trained.idempotency_key == idempotency_key(shard_parameters(POLICY, tiny.policy, run, None))
    assert trained.name == f"{run.run_id}-policy" and trained.job_variables == {"gpu_count": 1}
    runs.append(trained)
    assert all(r.state.is_completed() and r.parent_task_run_id and "gpu" in r.tags for r in runs)
    with get_client(sync_client=True) as client:  # the deployments' gpu tag reached the shard and training tasks
        tasks = [t for r in runs for t in client.read_task_runs(flow_run_filter=by_id(r.id))]
    assert len(tasks) == len(expected) + 1 and all("gpu" in t.tags for t in tasks)


def stage_metrics(lake_path: Path, kind: str, run_id: str) -> dict:
    """What the shards told the commit (token counts, verdict tallies): it came back as each shard run's result."""
    stages = Lake(str(lake_path.with_name(f"lake-{kind}"))).stages(run_id)
    return {"tokens": stages["rollouts"]["metrics"]["tokens"], "reasons": stages["verdicts"]["metrics"]["reasons"]}


SHARDS, TRAININGS = "mathfactory-shard/shard", "mathfactory-train/train"


def deployment_flow_runs(name: str) -> list:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]


def by_id(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


@pytest.mark.slow
def test_a_failed_shard_run_is_rerun_in_place(tiny, lake_path, deployment_run, tmp_path):
    """The same key finds the same flow run even after it failed; the fan-out retries that run, as the UI's
    Retry does, instead of returning its failure forever."""
    run_id, lake = tiny.run_id(), tmp_path / "lake"
    params = shard_parameters(VERDICTS, tiny.verify, Run(lake=str(lake), run_id=run_id, seed=tiny.seed), 0)
    with pytest.raises(RuntimeError, match="ended Failed"):
        fanout.deployment_run.fn(SHARDS, params, 1)  # no rollouts to grade in this lake yet
    failed = [r for r in deployment_flow_runs(SHARDS) if r.idempotency_key == idempotency_key(params)]
    assert len(failed) == 1 and failed[0].state.is_failed()

    made = lake_path.with_name("lake-deployment") / "runs" / run_id
    for stage in ("problems", "rollouts"):
        shutil.copytree(made / stage, lake / "runs" / run_id / stage)
    tally = fanout.deployment_run.fn(SHARDS, params, 1)
    [rerun] = [r for r in deployment_flow_runs(SHARDS) if r.idempotency_key == idempotency_key(params)]
    assert rerun.id == failed[0].id and rerun.state.is_completed() and rerun.run_count >= 2
    graded = list(Lake(str(lake)).read_part(run_id, "verdicts", 0, Verdict))
    assert graded == list(Lake(str(made.parents[1])).read_part(run_id, "verdicts", 0, Verdict))
    assert sum(tally["reasons"].values()) == len(graded)


# -- trainings where the GPUs are, through an S3 lake ------------------------------------------------------------

METHOD = "rft"


@flow(name="mathfactory-test-train-and-evaluate")
def train_and_evaluate(cfg: FactoryConfig, run: Run) -> None:
    """What the pipeline does with a method, through the same executor: trained where cfg.runner says, then
    evaluated here (a local runner), reading the model back from the lake."""
    execute(TRAIN_SPECS[stage_name(METHOD)], cfg.train, run, cfg.runner)
    execute(EVALUATIONS[eval_stage(METHOD)], cfg.evaluate, run)


@pytest.fixture(scope="module")
def pi_sft(tiny, lake_path, local_run) -> Path:
    """The local run's pi_sft (a 4-step policy samples nothing to train on, so the method's set is a toy one)."""
    return Lake(str(lake_path.with_name("lake-local"))).local_dir(tiny.run_id(), POLICY.name)


def train_in_s3(s3_url: str, pi_sft: Path, runner: RunnerConfig) -> tuple[Run, int, float]:
    """The tiny run's problems, pi_sft and a toy training set for METHOD put in a fresh S3 lake, then
    train_and_evaluate; the run, the set's rows and the seconds the flow took."""
    cfg = load_preset(str(TINY_PRESET), [f"lake={s3_url}", f"train.methods=[{METHOD}]",
                                         f"train.trl_args.{METHOD}.max_steps=2", "evaluate.k=0", "evaluate.shards=1"])
    cfg = cfg.model_copy(update={"runner": runner})
    run, lake = Run(lake=s3_url, run_id=cfg.run_id(), seed=cfg.seed, grading=cfg.verify), Lake(s3_url)
    build(PROBLEMS, cfg.problems, run)
    lake.put_dir(pi_sft, run.run_id, POLICY.name)
    lake.commit(run.run_id, POLICY.name, None)
    rows, _ = toy_training_sets([p for p in run.read(PROBLEMS) if p.split == "train"])
    lake.write_part(run.run_id, METHOD, 0, SFTExample, rows)
    lake.commit(run.run_id, METHOD, SFTExample)
    t0 = time.perf_counter()
    train_and_evaluate(cfg, run)
    return run, len(rows), time.perf_counter() - t0


def landed_in_the_bucket_and_read_back(run: Run, rows: int) -> dict:
    """The method is a whole model directory in the bucket, its marker says it trained on the set from pi_sft,
    and this process read it back from the bucket to evaluate it. The method's marker metrics."""
    lake, stage = run.store, stage_name(METHOD)
    files = {p.rsplit("/", 1)[1] for p in lake.fs.ls(f"{lake.stage_path(run.run_id, stage)}/model", detail=False)}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files, files
    trained = lake.marker(run.run_id, stage)["metrics"]
    assert trained["steps"] == 2 and trained["train_rows"] == rows and trained["init"] == f"runs/{run.run_id}/policy"
    model = lake.local_dir(run.run_id, stage)
    assert model.is_relative_to(os.environ["MATHFACTORY_CACHE"])  # downloaded here, not a path someone shares
    check_model_dir(model)
    assert lake.marker(run.run_id, eval_stage(METHOD))["rows"] == 2 * 4  # 4 test problems per education level
    return trained


@pytest.mark.slow  # a production path with its own flow runs: make test-faults, and CI
def test_a_method_trains_in_a_ray_task_given_a_gpu_into_an_s3_lake(prefect_api, ray_head, pi_sft, s3_url,
                                                                   s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)  # reaches the Ray workers by name (LAKE_ENV)
    address, temp = ray_head
    runner = RunnerConfig(kind="ray", address=address, ray_options={"num_gpus": 1})
    run, rows, seconds = train_in_s3(s3_url, pi_sft, runner)
    print(f"\n{METHOD} as a Ray task into S3, then evaluated here: {seconds:.1f} s")
    landed_in_the_bucket_and_read_back(run, rows)
    # It ran in a Ray worker that Ray gave the head's one GPU.
    worker_logs = "".join(p.read_text(errors="replace") for p in temp.glob("session_*/logs/worker-*"))
    assert re.search(rf"{stage_name(METHOD)}: training on \S+, 1 trainer process\(es\), CUDA_VISIBLE_DEVICES=0",
                     worker_logs)


@pytest.mark.slow  # a production path with its own flow runs: make test-faults, and CI
def test_a_method_trains_on_the_gpu_pool_into_an_s3_lake(prefect_api, shard_worker, pi_sft, s3_url, s3_server,
                                                         monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    run, rows, seconds = train_in_s3(s3_url, pi_sft, RunnerConfig(kind="deployment", poll_s=1))
    print(f"\n{METHOD} as a run of the train deployment into S3, then evaluated here: {seconds:.1f} s")
    trained = landed_in_the_bucket_and_read_back(run, rows)
    (flow_run,) = [r for r in deployment_flow_runs(TRAININGS) if r.parameters["run"]["lake"] == run.lake]
    assert flow_run.name == f"{run.run_id}-{stage_name(METHOD)}" and flow_run.state.is_completed()
    assert flow_run.job_variables == {"gpu_count": 1} and "gpu" in flow_run.tags
    # Two jobs at once on this worker: the trainer took its share of the cores, not all of them.
    assert trained["threads"] == threads_per_job(usable_cores(), WORKER_JOBS)
    # The worker got pi_sft from the bucket (its download cache) and kept no model anywhere else.
    assert any((d / "config.json").is_file() for d in (shard_worker / "cache").iterdir())
    assert not list(shard_worker.glob("mathfactory-*"))
