"""The production path end to end: a real Prefect server and a process worker (subprocesses this module starts and
stops), `mathfactory deploy` from infra/prefect.yaml, backfills run by the worker, the nightly schedule."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from postgres import postgres
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from support import REPO, TINY_PRESET, seed_rows, tiny_policy

from mathfactory.flows.config import FactoryConfig, load_preset
from mathfactory.flows.deploy import GPU_TEMPLATE, PREFECT_FILE
from mathfactory.tasks.core.records import Verdict
from mathfactory.tasks.storage import Lake, write_file_rows

BIN = REPO / ".venv" / "bin"
DATES = ["2026-11-01", "2026-11-02"]
# Seconds without a heartbeat (sent every 30 s, Prefect's minimum) before a run is Crashed: 3 beats, the CLI's
# minimum. The server runs on PostgreSQL (tests/postgres.py): on SQLite its writes waited up to 60 s on a lock
# while two dates ran, a heartbeat could arrive a minute late, and this had to be 120.
CRASH_AFTER = 90
PLANTED = f"sk-planted-{os.urandom(8).hex()}"  # a served model's key in everyone's environment: must go nowhere


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    env: dict
    tmp: Path
    procs: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, env=env or self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        return proc

    def mf(self, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        """The `mathfactory` command as a user runs it."""
        return subprocess.run([str(BIN / "mathfactory"), *args], env=env or self.env, cwd=REPO,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def stop(proc: subprocess.Popen) -> None:
    """The process group (the worker's flow-run children too), politely, then not."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


@pytest.fixture(scope="module")
def database():
    """The server's PostgreSQL (tests/postgres.py): its URL."""
    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, database):
    tmp = tmp_path_factory.mktemp("prefect-server")
    (tmp / "tmp").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "home"), PREFECT_API_URL=url, PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", TMPDIR=str(tmp / "tmp"), HF_HUB_OFFLINE="1",
               MATHFACTORY_CACHE=str(tmp / "cache"), COLUMNS="200", OPENAI_API_KEY=PLANTED)
    st = Stack(url, env, tmp)
    started = time.monotonic()
    server = st.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", url.split(":")[2].split("/")[0],
                      env={**env, "PREFECT_API_DATABASE_CONNECTION_URL": database})
    try:
        while True:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            # Its first start migrates the fresh PostgreSQL database: seen taking over 400 s on a 2-core box at load 11.
            assert time.monotonic() - started < 600, "server not healthy after 600 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        st.seconds["server start"] = round(time.monotonic() - started, 1)
        yield st
    finally:
        for proc, log in reversed(st.procs):  # worker first, then the server
            stop(proc)
            log.close()
        print(f"\nmeasured: {st.seconds}")


@contextmanager
def api(st: Stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: st.url}), get_client(sync_client=True) as client:
        yield client


def nightly_policy(stack: Stack) -> Path:
    """Where the deployed nightly refresh finds its model (test_the_nightly_refresh_... puts one there)."""
    return stack.tmp / "nightly-policy"


@pytest.fixture(scope="module")
def deployed(stack) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = stack.mf("deploy", "--gpus", "2", "--crash-after", str(CRASH_AFTER),
                      "--nightly-policy", str(nightly_policy(stack)))
    stack.seconds["deploy"] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_worker(stack: Stack) -> subprocess.Popen:
    return stack.start("worker", str(BIN / "prefect"), "worker", "start", "--pool", "cpu")


@pytest.fixture(scope="module")
def worker(stack, deployed) -> list[subprocess.Popen]:
    """The cpu pool's worker; a test that kills it appends its replacement."""
    return [start_worker(stack)]


def test_prefect_yaml_form_defaults_are_the_toy_preset():
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert FactoryConfig.model_validate(by_name["pipeline"]["parameters"]["config"]) == load_preset("toy")
    nightly = dict(by_name["nightly-refresh"]["parameters"]["config"])
    assert nightly.pop("policy") == {"pretrained": "{{ $MATHFACTORY_NIGHTLY_POLICY }}"}
    assert FactoryConfig.model_validate(nightly) == load_preset("toy")
    assert by_name["nightly-refresh"]["parameters"]["train"] is False


def test_deploy_creates_pools_limit_and_deployments_and_reruns_in_place(stack, deployed):
    assert "work pool cpu (process): created" in deployed.stdout
    assert "automation mathfactory-crash-unresponsive-runs: created" in deployed.stdout
    with api(stack) as client:
        first = {d.name: d for d in client.read_deployments()}
        assert set(first) == {d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
        again = stack.mf("deploy", "--gpus", "2", "--crash-after", str(CRASH_AFTER),
                         "--nightly-policy", str(nightly_policy(stack)))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "work pool cpu (process): unchanged" in again.stdout
        assert "automation mathfactory-crash-unresponsive-runs: unchanged" in again.stdout
        (zombies,) = client.read_automations_by_name("mathfactory-crash-unresponsive-runs")
        assert zombies.trigger.within.total_seconds() == CRASH_AFTER and zombies.enabled
        second = {d.name: d for d in client.read_deployments()}
        assert {n: d.id for n, d in second.items()} == {n: d.id for n, d in first.items()}

        pipeline = second["pipeline"]
        assert pipeline.work_pool_name == "cpu" and pipeline.parameters["config"]["name"] == "toy"
        # The checkout reaches cpu runs through the pool's env; every pool resolves the pull step at run time.
        assert pipeline.job_variables == {"env": {"MATHFACTORY_HOME": str(REPO), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
        assert all(d.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                     {"directory": "{{ $MATHFACTORY_HOME }}"}}] for d in second.values())
        assert "config" in pipeline.parameter_openapi_schema["properties"]  # the UI's form
        nightly = second["nightly-refresh"]
        assert nightly.parameters["config"]["policy"] == {"pretrained": str(nightly_policy(stack))}
        assert nightly.parameters["train"] is False  # a data refresh unless the form's switch says otherwise
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]

        assert client.read_work_pool("cpu").type == "process"
        gpu = client.read_work_pool("gpu")
        assert gpu.type == "kubernetes"
        if GPU_TEMPLATE.is_file():
            assert gpu.base_job_template == json.loads(GPU_TEMPLATE.read_text())
        else:
            assert "job_manifest" in gpu.base_job_template["job_configuration"]
        assert client.read_global_concurrency_limit_by_name("tag:gpu").limit == 2


def backfill_args(lake_dir: Path) -> list[str]:
    return ["backfill", "--start", DATES[0], "--end", DATES[1], "--preset", str(TINY_PRESET), "--lake", str(lake_dir)]


@pytest.fixture(scope="module")
def backfilled(stack, worker, tmp_path_factory) -> Path:
    """Two dates run by the worker; returns their lake."""
    lake_dir = tmp_path_factory.mktemp("lake")
    started = time.monotonic()
    result = stack.mf(*backfill_args(lake_dir))
    stack.seconds["backfill of 2 dates, trigger to completed"] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, result.stdout + result.stderr + (stack.tmp / "worker.log").read_text()[-3000:]
    return lake_dir


def test_backfill_runs_on_the_worker_and_a_repeat_creates_nothing(stack, backfilled):
    lake_dir, args = backfilled, backfill_args(backfilled)
    cfg, lake = load_preset(str(TINY_PRESET), [f"lake={lake_dir}"]), Lake(str(lake_dir))
    run_ids = [cfg.run_id(d) for d in DATES]
    assert lake.runs() == run_ids and all(lake.marker(r, "verdicts")["rows"] == 24 for r in run_ids)
    with api(stack) as client:
        runs = {r.name: r for r in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=run_ids)))}
        assert set(runs) == set(run_ids) and all(r.state.is_completed() for r in runs.values())
        assert {r.parameters["date"] for r in runs.values()} == set(DATES)
        count = client.count_flow_runs()
        markers = {r: {s: lake.marker(r, s) for s in lake.stages(r)} for r in run_ids}

        started = time.monotonic()
        again = stack.mf(*args)
        stack.seconds["repeated backfill"] = round(time.monotonic() - started, 1)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("existing") == 2 and "Completed" in again.stdout
        assert client.count_flow_runs() == count
        assert {r: {s: lake.marker(r, s) for s in lake.stages(r)} for r in run_ids} == markers


def test_a_secret_in_the_environment_reaches_no_deployment_run_log_artifact_or_file(stack, backfilled):
    """OPENAI_API_KEY is set for the server, the worker and the CLI (as on a user's machine): after deploying and
    backfilling, it is in no deployment (parameters, job variables), work pool, flow run, log line or artifact the
    server holds, and in no file of the lake or the processes' logs."""
    with api(stack) as client:
        logs, page = [], client.read_logs(limit=200)
        while page:
            logs += [log.message for log in page]
            page = client.read_logs(limit=200, offset=len(logs))
        held = {
            "deployments": [d.model_dump_json() for d in client.read_deployments()],
            "work pools": [p.model_dump_json() for p in client.read_work_pools()],
            "flow runs": [r.model_dump_json() for r in client.read_flow_runs()],
            "logs": logs,
            "artifacts": [a.model_dump_json() for a in client.read_artifacts()],
        }
    assert all(held.values()), {k: len(v) for k, v in held.items()}  # each kind was there to look in
    assert {kind: [x for x in items if PLANTED in x] for kind, items in held.items()} == {k: [] for k in held}
    files = [p for p in [*backfilled.rglob("*"), *stack.tmp.glob("*.log")] if p.is_file()]
    assert len(files) > 20 and [p for p in files if PLANTED.encode() in p.read_bytes()] == []


@pytest.mark.slow
def test_two_backfills_of_the_same_dates_at_once_run_each_date_once(stack, worker, tmp_path):
    """Two users backfill the same dates into the same lake at the same moment: the server hands both the same
    flow run per date (the idempotency key), so each date runs once, and every row lands once."""
    dates, lake_dir = ["2026-11-05", "2026-11-06"], tmp_path / "lake"
    args = ["backfill", "--start", dates[0], "--end", dates[1], "--preset", str(TINY_PRESET), "--lake", str(lake_dir)]
    started = time.monotonic()
    procs = [subprocess.Popen([str(BIN / "mathfactory"), *args], env=stack.env, cwd=REPO, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    stack.seconds["two backfills of 2 dates at once"] = round(time.monotonic() - started, 1)
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs) + (stack.tmp / "worker.log").read_text()[-3000:]
    cfg, lake = load_preset(str(TINY_PRESET)), Lake(str(lake_dir))
    run_ids = [cfg.run_id(d) for d in dates]
    with api(stack) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=run_ids)))
    assert sorted(r.name for r in runs) == run_ids and all(r.state.is_completed() and r.run_count == 1 for r in runs)
    assert lake.runs() == run_ids
    for run_id in run_ids:
        verdicts = list(lake.read(run_id, "verdicts", Verdict))
        assert len(verdicts) == len({v.rollout_id for v in verdicts}) == lake.marker(run_id, "verdicts")["rows"] == 24


@pytest.mark.slow
def test_a_failed_date_is_retried_in_place(stack, backfilled):
    """A date whose run failed (its model was not there yet) reruns as the same flow run on the next backfill."""
    model, lake_dir = stack.tmp / "model", stack.tmp / "lake-retry"
    args = ["backfill", "--start", "2026-11-03", "--end", "2026-11-03", "--preset", str(TINY_PRESET),
            "--lake", str(lake_dir), "--set", f"policy.pretrained={model}"]
    failed = stack.mf(*args)
    assert failed.returncode == 1 and "Failed" in failed.stdout, failed.stdout + failed.stderr
    with api(stack) as client:
        of_pipeline = DeploymentFilter(name=DeploymentFilterName(any_=["pipeline"]))
        count = client.count_flow_runs(deployment_filter=of_pipeline)
        trained = load_preset(str(TINY_PRESET)).run_id(DATES[0])  # the model the first backfill trained
        shutil.copytree(Lake(str(backfilled)).local_dir(trained, "policy"), model)
        retried = stack.mf(*args)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert "retried" in retried.stdout and "Completed" in retried.stdout
        run_id = load_preset(str(TINY_PRESET), [f"policy.pretrained={model}"]).run_id("2026-11-03")
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
        assert run.run_count == 2 and run.state.is_completed()
        assert client.count_flow_runs(deployment_filter=of_pipeline) == count
    assert Lake(str(lake_dir)).runs() == [run_id] and Lake(str(lake_dir)).marker(run_id, "verdicts")
    shutil.rmtree(model)


@pytest.mark.slow
def test_a_date_whose_worker_died_is_crashed_then_completed_by_the_next_backfill(stack, backfilled, worker):
    """SIGKILL the worker (and its flow-run process) during SFT: the heartbeat automation marks the run Crashed,
    the rerun of the date resumes it in place, skipping the stage that was done and writing nothing twice."""
    date, lake_dir = "2026-11-04", stack.tmp / "lake-killed"
    args = ["backfill", "--start", date, "--end", date, "--preset", str(TINY_PRESET), "--lake", str(lake_dir),
            "--set", "policy.max_steps=200"]  # ~8 s: long enough to be killed in the middle of
    run_id = load_preset(str(TINY_PRESET), ["policy.max_steps=200"]).run_id(date)
    lake = Lake(str(lake_dir))
    assert stack.mf(*args, "--no-wait").returncode == 0
    deadline = time.monotonic() + 120
    while not (lake.runs() and lake.marker(run_id, "problems")):
        assert time.monotonic() < deadline, (stack.tmp / "worker.log").read_text()[-3000:]
        time.sleep(0.2)
    problems = lake.marker(run_id, "problems")
    # A node dying: every process of the worker's tree gets SIGKILL at once, so none can report a state.
    tree = psutil.Process(worker[-1].pid)
    for proc in [tree, *tree.children(recursive=True)]:
        proc.kill()
    worker[-1].wait(10)
    assert lake.marker(run_id, "policy") is None, "the run finished before the kill; lengthen its SFT"

    started = time.monotonic()
    with api(stack) as client:
        of_run = FlowRunFilter(name=FlowRunFilterName(any_=[run_id]))
        while not (run := client.read_flow_runs(flow_run_filter=of_run)[0]).state.is_crashed():
            assert run.state.is_running(), run.state
            assert time.monotonic() - started < CRASH_AFTER + 90, "no Crashed state: is the automation deployed?"
            time.sleep(2)
        stack.seconds["kill to Crashed"] = round(time.monotonic() - started, 1)
        assert "heartbeat" in run.state.message

        worker.append(start_worker(stack))
        rerun = stack.mf(*args)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "retried" in rerun.stdout and "Completed" in rerun.stdout
        (run,) = client.read_flow_runs(flow_run_filter=of_run)
        assert run.state.is_completed() and run.run_count == 2
    assert lake.runs() == [run_id] and lake.marker(run_id, "problems") == problems  # done before the kill: kept
    verdicts = list(lake.read(run_id, "verdicts", Verdict))
    assert len(verdicts) == lake.marker(run_id, "verdicts")["rows"] == 24
    assert len({v.rollout_id for v in verdicts}) == 24


def test_the_nightly_refresh_is_scheduled(stack, deployed):
    deadline = time.monotonic() + 90
    with api(stack) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly-refresh"])))
            if runs or time.monotonic() > deadline:
                break
            time.sleep(2)
    assert runs, "the server created no scheduled runs for nightly-refresh (SQLAlchemy 2.1? see ENVIRONMENT.md)"
    assert all(r.state.is_scheduled() and (r.expected_start_time.hour, r.expected_start_time.minute) == (2, 0)
               for r in runs)


def test_deploy_with_the_api_down_names_the_url(stack):
    url = f"http://127.0.0.1:{free_port()}/api"
    result = stack.mf("deploy", env={**stack.env, "PREFECT_API_URL": url}, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and url in output
    assert "Traceback" not in output and len(output.strip().splitlines()) <= 2, output


NIGHTS = ["2026-12-01", "2026-12-02"]


def night(stack: Stack, parameters: dict) -> tuple[object, dict]:
    """One run of the deployed nightly refresh on the worker, awaited; the flow run and the lake's watermark."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: stack.url}):
        flow_run = run_deployment("mathfactory-nightly-refresh/nightly-refresh", parameters=parameters,
                                  timeout=240, poll_interval=1, as_subflow=False)
    stack.seconds[f"night {parameters['date']}, trigger to final"] = round(time.monotonic() - started, 1)
    assert flow_run.state.is_completed(), (flow_run.state, (stack.tmp / "worker.log").read_text()[-3000:])
    return flow_run, Lake(parameters["config"]["lake"]).read_state("nightly/toy")


@pytest.mark.slow  # a production path with its own flow runs: make test-faults, and CI
def test_the_deployed_nightly_refresh_commits_a_small_night_and_skips_what_it_cannot_train(stack, worker, tmp_path):
    """The nightly-refresh deployment with the values `mathfactory deploy` registered (the lake aside) and a 5-row
    incoming file: the night's data is committed, the watermark advances, and the model stages are skipped with
    why. With the form's `train` switch on, a method whose set is smaller than a batch is skipped with its rows
    and the minimum, and evaluation for want of a test split; the night still completes."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from mathfactory.tasks.pairs import SETS
    from mathfactory.tasks.train import min_rows, train_sets

    tiny_policy(nightly_policy(stack))
    with api(stack) as client:
        form = client.read_deployment_by_name("mathfactory-nightly-refresh/nightly-refresh").parameters
    assert form["config"]["policy"] == {"pretrained": str(nightly_policy(stack))} and form["train"] is False
    lake_dir = tmp_path / "lake"
    config = {**form["config"], "lake": str(lake_dir)}  # where the lake is is not part of a run's identity
    cfg, lake = FactoryConfig.model_validate(config), Lake(str(lake_dir))
    write_file_rows(str(lake_dir / "incoming" / "a.jsonl"), seed_rows(0, 5))

    # Night 1, the deployed defaults: a data refresh.
    flow_run, mark = night(stack, {"config": config, "date": NIGHTS[0]})
    tonight = mark["nights"][NIGHTS[0]]
    run_id = tonight["run_id"]
    assert mark["last_date"] == NIGHTS[0] and tonight["files"] == [str(lake_dir / "incoming" / "a.jsonl")]
    stages = lake.stages(run_id)
    assert stages["problems"]["rows"] == 5 and stages["verdicts"]["rows"] == 5 * cfg.sample.n
    assert {"credit", *SETS} <= set(stages) and not any(s.startswith(("train_", "eval_")) for s in stages)
    off = {f"train_{m}": "training is opt-in and off for this run (train=false)" for m in cfg.train.methods}
    off["eval_sft"] = "evaluation is opt-in and off for this run (train=false)"
    assert {s: why["reason"] for s, why in lake.skipped(run_id).items()} == off == tonight["skipped"]
    with api(stack) as client:
        # Named after what they are: the night, and the run it made.
        assert client.read_flow_run(flow_run.id).name == f"toy-nightly-{NIGHTS[0]}"
        (pipeline_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
        assert pipeline_run.parent_task_run_id is not None and pipeline_run.state.is_completed()
        key = re.sub(r"[^a-z0-9-]", "-", f"mathfactory-{run_id}".lower())
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert "skipped (not failed)" in artifact.data, artifact.data
    assert all(f"| {stage} | {why} |" in artifact.data for stage, why in off.items())

    # Night 2, the form's switch on: each method trains on its set, or is skipped for want of rows.
    write_file_rows(str(lake_dir / "incoming" / "b.jsonl"), seed_rows(10, 5))
    _, mark = night(stack, {"config": config, "date": NIGHTS[1], "train": True})
    tonight = mark["nights"][NIGHTS[1]]
    run_id, skipped = tonight["run_id"], lake.skipped(tonight["run_id"])
    assert mark["last_date"] == NIGHTS[1] and tonight["files"] == [str(lake_dir / "incoming" / "b.jsonl")]
    stages = lake.stages(run_id)
    assert stages["problems"]["rows"] == 5 and {"credit", *SETS} <= set(stages)
    trained = []
    for method in cfg.train.methods:
        rows = sum(stages[s]["rows"] for s in train_sets(cfg.train, method))
        if rows >= min_rows(cfg.train, method):
            assert f"train_{method}" in stages
            trained.append(method)
        else:
            assert {k: skipped[f"train_{method}"][k] for k in ("rows", "minimum")} == {
                "rows": rows, "minimum": min_rows(cfg.train, method)}
            assert f"fewer than one batch of {min_rows(cfg.train, method)}" in skipped[f"train_{method}"]["reason"]
    assert "rft" not in trained  # a 4-step policy solves nothing: no positives to fine-tune on
    for method in ["sft", *trained]:  # incoming files have no test split
        assert skipped[f"eval_{method}"]["reason"] == "no test problems to evaluate on (the run's problems: 5 train)"
    assert tonight["skipped"] == {s: why["reason"] for s, why in skipped.items()}
    assert set(skipped) == {f"train_{m}" for m in cfg.train.methods if m not in trained} | {
        f"eval_{m}" for m in ["sft", *trained]}
    # The run's log says what each model stage made, or why it was skipped. A flow run's last log lines reach the
    # API after its final state (its process ships them in batches), so they are polled for.
    made = [f"policy: the pretrained model {nightly_policy(stack)} (referenced"] + [
        f"train_{m}: a model trained on {stages[f'train_{m}']['metrics']['train_rows']} rows of "
        f"{' + '.join(train_sets(cfg.train, m))} (" for m in trained]
    with api(stack) as client:
        (pipeline_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
        of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[pipeline_run.id]))
        deadline = time.monotonic() + 30
        while True:
            logs, page = [], client.read_logs(log_filter=of_run, limit=200)
            while page:
                logs += [log.message for log in page]
                page = client.read_logs(log_filter=of_run, limit=200, offset=len(logs))
            missing = [line for line in made if not any(m.startswith(line) for m in logs)]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert not missing, (missing, [m for m in logs if m.startswith(("policy", "train_"))])
    assert all(f"{stage}: skipped: {why['reason']}" in logs for stage, why in skipped.items())
