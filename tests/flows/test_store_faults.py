"""The pipeline on an S3 lake whose store misbehaves (tests/faults.py): stopped in the middle of a stage's writes
and started again, slow on every request, answering a share of requests with 500/503; and two runs of one config
into one lake at once. Each run must complete and the lake hold exactly what an undisturbed run holds: the same
stages, row counts and content hashes."""

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import boto3
import pytest
import s3fs
from faults import FaultyStore, MotoOnPort, stage_digests
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.config import load_preset
from mathfactory.tasks.storage import Lake

pytestmark = pytest.mark.slow
TINY_PRESET = Path(__file__).resolve().parents[1] / "tiny.yaml"
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
BUCKET = "mathfactory-faults"
LATENCY_S = 0.05
OUTAGE_S = 20  # longer than botocore's default retries ride out (4 retries, ~7 s expected)


@pytest.fixture(scope="module")
def moto(s3_server):
    """A moto server of this module's own, so stopping it stops no other test's store (s3_server gives the keys)."""
    server = MotoOnPort()
    server.start()
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(moto):
    with FaultyStore(moto.url) as proxy:
        yield proxy


def fresh_prefix() -> str:
    return uuid.uuid4().hex[:8]


def run(endpoint: str, monkeypatch, prefix: str | None = None) -> tuple[Lake, str, float]:
    """`mathfactory run` of the tiny preset into a fresh prefix at `endpoint`; the lake, run id, seconds."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()  # the endpoint comes from the environment, not the cache key
    url = f"s3://{BUCKET}/{prefix or fresh_prefix()}"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", url])
    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    return Lake(url), load_preset(str(TINY_PRESET)).run_id(), seconds


@pytest.fixture(scope="module")
def undisturbed(prefect_api, store):
    """A run through the proxy with no fault: what every disturbed run must hold, and its time."""
    with pytest.MonkeyPatch.context() as mp:
        lake, run_id, seconds = run(store.url, mp)
        return stage_digests(lake, run_id), seconds


def strike_when(moto: MotoOnPort, prefix: str, seconds: float) -> threading.Thread:
    """A watcher that stops the store for `seconds` the moment an object under `prefix` exists."""
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")

    def watch() -> None:
        while True:
            if client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount"):
                return moto.outage(seconds)
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_store_stopped_mid_stage_and_restarted(prefect_api, moto, undisturbed, monkeypatch):
    """The store stops (connections refused) once a rollouts shard has written its summary, as it is about to
    write its part: that part, the other shard's and the commit wait for it; OUTAGE_S later it is back with its
    objects and the run completes with what an undisturbed run made."""
    prefix, run_id = fresh_prefix(), load_preset(str(TINY_PRESET)).run_id()
    watcher = strike_when(moto, f"{prefix}/runs/{run_id}/rollouts/_shards/part-", OUTAGE_S)
    lake, run_id, seconds = run(moto.url, monkeypatch, prefix)
    assert not watcher.is_alive(), "the outage never happened"
    assert stage_digests(lake, run_id) == undisturbed[0]
    print(f"\nmeasured: {OUTAGE_S} s outage, run {seconds:.0f} s (undisturbed {undisturbed[1]:.0f} s)")


def test_a_store_failing_a_share_of_requests(prefect_api, store, undisturbed, monkeypatch):
    store.counts.clear()
    store.error_rate = 0.1
    try:
        lake, run_id, seconds = run(store.url, monkeypatch)
    finally:
        store.error_rate = 0.0
    injected = store.counts[500] + store.counts[503]
    assert injected >= 10, store.counts
    assert stage_digests(lake, run_id) == undisturbed[0]
    print(f"\nmeasured: {injected} of {store.counts['requests']} requests failed, run {seconds:.0f} s")


def test_a_slow_store(prefect_api, store, undisturbed, monkeypatch):
    store.counts.clear()
    store.latency = LATENCY_S
    try:
        lake, run_id, seconds = run(store.url, monkeypatch)
    finally:
        store.latency = 0.0
    assert stage_digests(lake, run_id) == undisturbed[0]
    print(f"\nmeasured: {store.counts['requests']} requests {LATENCY_S} s late each, run {seconds:.0f} s "
          f"(undisturbed {undisturbed[1]:.0f} s)")


def test_two_runs_of_one_config_on_one_lake_at_once(prefect_api, store, undisturbed):
    """Two `mathfactory run` processes of the same config into the same lake, started together (both through the
    proxy, which sees every write): both complete, every stage holds what one undisturbed run holds, and every
    marker was created once: the other run's commit found it there and agreed with it."""
    from prefect.settings import PREFECT_API_URL

    url = f"s3://{BUCKET}/{fresh_prefix()}"
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": store.url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    store.log.clear()
    started = time.monotonic()
    procs = [subprocess.Popen([str(BIN / "mathfactory"), "run", "--preset", str(TINY_PRESET), "--lake", url],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    seconds = time.monotonic() - started
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", store.url)
        lake, run_id = Lake(url), load_preset(str(TINY_PRESET)).run_id()
        assert stage_digests(lake, run_id) == undisturbed[0]
    marker_puts = Counter(path.split("?")[0] for method, path, status in store.log
                          if method == "PUT" and path.split("?")[0].endswith("/_SUCCESS.json") and status == 200)
    assert set(marker_puts.values()) == {1} and len(marker_puts) == len(undisturbed[0]), marker_puts
    refused = sum(1 for method, path, status in store.log if method == "PUT" and status == 412)
    print(f"\nmeasured: two runs at once {seconds:.0f} s (one alone {undisturbed[1]:.0f} s), "
          f"{len(marker_puts)} markers created once each, {refused} second commits refused by the store")
