"""The pipeline with its lake on S3 (moto on loopback), set up as a user would: the endpoint in
AWS_ENDPOINT_URL_S3, the keys in a Prefect Secret block named by $MATHFACTORY_STORAGE_SECRET, nothing in the URL.
Then the results are read back with pyarrow, DuckDB and the CLI, and the secret is looked for everywhere."""

import json
import logging
import os
import uuid
from pathlib import Path

import botocore.exceptions
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.config import load_preset
from mathfactory.tasks.core.records import Rollout, Verdict
from mathfactory.tasks.pairs import DATASETS
from mathfactory.tasks.storage import SECRET_ENV, DataError, Lake

cli = CliRunner(env={"COLUMNS": "400"})
# Not imported from conftest: a full run also loads tests/engines/conftest.py, and the bare name `conftest`
# then means whichever came last.
TINY_PRESET = Path(__file__).resolve().parents[1] / "tiny.yaml"
BUCKET = "mathfactory-lake"  # the bucket infra/k8s/minio.yaml creates
KEY_ID = "AKIAMATHFACTORYTEST"
SECRET_KEY = f"s3cr3t-{uuid.uuid4().hex}"  # unique, so finding it anywhere means it leaked
ENV_SECRET = f"sk-planted-{uuid.uuid4().hex}"  # a served model's key in the environment, where users keep it
STAGES = ["problems", "policy", "rollouts", "verdicts", "credit", *DATASETS, "eval_sft"]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.NOTSET)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def no_env_keys(s3_server):
    """The endpoint the way a user sets it, and no AWS keys in the environment: only the block can supply them."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="admin",
                 aws_secret_access_key="admin").create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", s3_server)  # botocore's own setting; s3fs honours it
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        yield mp


@pytest.fixture(scope="module")
def run(prefect_api, no_env_keys, s3_server):
    """One tiny run through `mathfactory run --lake s3://...`, with every log line captured."""
    block = f"lake-keys-{uuid.uuid4().hex[:8]}"
    Secret(value={"s3": {"key": KEY_ID, "secret": SECRET_KEY}}).save(block)
    no_env_keys.setenv(SECRET_ENV, block)
    no_env_keys.setenv("OPENAI_API_KEY", ENV_SECRET)
    url = f"s3://{BUCKET}/factory-{uuid.uuid4().hex[:8]}"
    capture = Capture()
    capture.setFormatter(logging.Formatter("%(name)s %(message)s %(args)s"))
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for lg in loggers:
        lg.addHandler(capture)
    try:
        result = cli.invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", url])
    finally:
        for lg in loggers:
            lg.removeHandler(capture)
    assert result.exit_code == 0, result.output
    cfg = load_preset(str(TINY_PRESET), [f"lake={url}"])
    return cfg, result.output, capture.lines


@pytest.fixture
def s3(s3_server):
    """An s3fs filesystem of the reader's own (a data scientist's notebook), with its own test keys."""
    import s3fs

    return s3fs.S3FileSystem(key="reader", secret="reader", client_kwargs={"endpoint_url": s3_server},
                             skip_instance_cache=True)


def test_every_stage_lands_in_the_bucket(run, s3):
    cfg, output, _ = run
    run_id = cfg.run_id()
    stages = Lake(cfg.lake).stages(run_id)
    assert sorted(stages) == sorted(STAGES)
    assert stages["rollouts"]["rows"] == stages["verdicts"]["rows"] == 2 * 2 * 6
    prefix = f"{cfg.lake.removeprefix('s3://')}/runs/{run_id}"
    for stage in STAGES:
        assert s3.exists(f"{prefix}/{stage}/_SUCCESS.json")
    assert s3.glob(f"{prefix}/rollouts/part-*.parquet") and s3.glob(f"{prefix}/policy/model/*.json")
    assert f"s3://{prefix}/verdicts" in output  # the report names where each stage landed


def test_pyarrow_and_duckdb_read_the_results(run, s3):
    import duckdb
    import pyarrow.dataset as ds

    cfg, _, _ = run
    lake, run_id = Lake(cfg.lake), cfg.run_id()
    verdicts_uri = lake.uri(run_id, "verdicts")
    table = ds.dataset(verdicts_uri.removeprefix("s3://"), filesystem=s3, format="parquet").to_table()
    assert sorted(table.column("rollout_id").to_pylist()) == sorted(v.rollout_id for v in
                                                                    lake.read(run_id, "verdicts", Verdict))

    con = duckdb.connect()
    con.register_filesystem(s3)
    joined = con.sql(f"""
        SELECT count(*), count(DISTINCT r.problem_id), sum(v.correct::INT)
        FROM read_parquet('{lake.uri(run_id, 'rollouts')}/part-*.parquet') r
        JOIN read_parquet('{verdicts_uri}/part-*.parquet') v USING (rollout_id)""").fetchall()[0]
    rollouts = list(lake.read(run_id, "rollouts", Rollout))
    assert joined[0] == len(rollouts) == 24 and joined[1] == len({r.problem_id for r in rollouts})
    assert joined[2] == sum(v.correct for v in lake.read(run_id, "verdicts", Verdict))


def test_ls_and_show_on_the_s3_lake(run):
    cfg, _, _ = run
    run_id = cfg.run_id()
    listed = cli.invoke(app, ["ls", "--lake", cfg.lake])
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and "verdicts (24)" in listed.output
    shown = cli.invoke(app, ["show", run_id, "rollouts", "--lake", cfg.lake, "-n", "2"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("rollout_id") == 2


@pytest.mark.parametrize("secret", [SECRET_KEY, ENV_SECRET], ids=["secret block", "environment"])
def test_the_secret_is_never_written_or_logged(run, s3, secret):
    """Neither the lake's key (from the Secret block) nor a key planted in the environment is in the lake, the
    log lines, the CLI's output, or anything the Prefect API holds: logs, flow-run and deployment parameters,
    artifacts, results persisted under PREFECT_HOME."""
    cfg, output, log_lines = run
    run_id = cfg.run_id()
    objects = s3.find(cfg.lake.removeprefix("s3://"))
    assert len(objects) > 10 and any(o.endswith("_SUCCESS.json") for o in objects)
    assert [o for o in objects if secret.encode() in s3.cat_file(o)] == []
    # Log lines as they left the process, and as the Prefect UI shows them.
    assert any(run_id in line for line in log_lines)
    assert not [line for line in log_lines if secret in line]
    with get_client(sync_client=True) as client:
        # Every page: the session's shared API holds other tests' logs too, more than one page of them.
        logs, page = [], client.read_logs(limit=200, offset=0)
        while page:
            logs += [log.message for log in page]
            page = client.read_logs(limit=200, offset=len(logs))
        params = [json.dumps(r.parameters, default=str) for r in client.read_flow_runs()]
        deployments = [d.model_dump_json() for d in client.read_deployments()]
        artifacts = [a.model_dump_json() for a in client.read_artifacts()]
    assert any(run_id in m for m in logs) and not [m for m in logs if secret in m]
    assert any(cfg.lake in p for p in params) and not [p for p in params if secret in p]
    assert not [d for d in deployments if secret in d]
    assert any(run_id in a for a in artifacts) and not [a for a in artifacts if secret in a]  # the run's report
    assert secret not in output
    # Results Prefect persisted for its own caching live under PREFECT_HOME.
    files = [p for p in Path(os.environ["PREFECT_HOME"]).rglob("*") if p.is_file() and ".db" not in p.suffix]
    assert [p for p in files if secret.encode() in p.read_bytes()] == []


def test_the_keys_came_from_the_block(run, no_env_keys, monkeypatch):
    """Without the block (and with no keys in the environment) the same lake is unreadable; with the standard AWS
    chain (env keys) instead of the block it is readable again."""
    cfg, _, _ = run
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        Lake(cfg.lake, skip_instance_cache=True).runs()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert cfg.run_id() in Lake(cfg.lake, skip_instance_cache=True).runs()


def test_the_block_can_name_the_endpoint_too(run, s3_server, monkeypatch):
    """The whole connection in one block (the README's example shape), with nothing S3 in the environment."""
    cfg, _, _ = run
    block = f"lake-all-{uuid.uuid4().hex[:8]}"
    Secret(value={"s3": {"key": KEY_ID, "secret": SECRET_KEY, "endpoint_url": s3_server}}).save(block)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv(SECRET_ENV, block)
    listed = cli.invoke(app, ["ls", "--lake", cfg.lake])
    assert listed.exit_code == 0, listed.output
    assert cfg.run_id() in listed.output and SECRET_KEY not in listed.output


def test_a_misshapen_block_is_named_without_its_value(prefect_api, monkeypatch, s3_url):
    name = f"flat-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": KEY_ID, "secret": SECRET_KEY}).save(name)  # options not keyed by protocol
    monkeypatch.setenv(SECRET_ENV, name)
    with pytest.raises(DataError, match=f"Secret block '{name}'") as e:
        Lake(s3_url)
    assert SECRET_KEY not in str(e.value)
