"""Test-wide isolation: no network, no ~/.prefect, a private Prefect home per session."""

import os
import tempfile
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="mathfactory-tests-")
os.environ.update(
    PREFECT_HOME=str(Path(_home) / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
    HF_HUB_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    MATHFACTORY_CACHE=str(Path(_home) / "cache"),
)

from support import SHARED_DATA  # noqa: E402

pytest_plugins = ["credit_world"]  # the credit and pairs stage tests' shared world and runs (module-scoped)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test API for the whole session (it costs ~10-20 s to start), stopped before output closes."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"{SHARED_DATA} is missing: clone the repo beside ../shared (see README)")
    return SHARED_DATA


# -- S3: a moto server on loopback speaking the real S3 HTTP protocol ----------------------------------------

S3_BUCKET = "mathfactory-test"


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1 (free port) holding the bucket S3_BUCKET; dummy credentials."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        # Dummy credentials, and no ~/.aws config that could point the clients somewhere real.
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_options(s3_server) -> dict:
    """fsspec storage options for the moto server (no region: moto and s3fs disagree on it); a fresh dict per
    test, since some readers (datasets.load_dataset) write into the options they are given."""
    return {"client_kwargs": {"endpoint_url": s3_server}}


@pytest.fixture
def s3_url(s3_server, request) -> str:
    """A fresh, empty s3:// prefix per test."""
    import uuid

    return f"s3://{S3_BUCKET}/{request.node.name.split('[')[0]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_lake(s3_url, s3_options):
    from mathfactory.tasks.storage import Lake

    return Lake(s3_url, **s3_options)
