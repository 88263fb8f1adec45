"""Prefect global limits around the requests to a served model, against a real Prefect API (the session's test
server) and the OpenAI-compatible test server on loopback (tests/engines/openai_app.py): two engines standing in
for two workers, each allowed 4 requests in flight of its own."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack

import pytest
from openai_app import Faults, Record, Server, make_app
from test_openai_engine import MODEL, ToyEngine

from mathfactory.tasks.engines import OpenAIOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.quota import LimitError

PARAMS = SamplingParams(n=1, temperature=0.7, max_new_tokens=8, seed=1)


@pytest.fixture
def limit(prefect_api):
    """limit(n, decay=None) -> the name of a new global concurrency limit of n slots (a rate limit with decay)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    names = []
    with get_client(sync_client=True) as client:
        def make(n: int, decay: float | None = None) -> str:
            names.append(f"served-{uuid.uuid4().hex[:8]}")
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=names[-1], limit=n, slot_decay_per_second=decay or 0.0))
            return names[-1]

        yield make
        for name in names:
            client.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def server():
    with ExitStack() as stack:
        def start(delay_s: float = 0.0) -> tuple[Server, Record]:
            record = Record()
            served = Server(make_app(ToyEngine(), MODEL, Faults(delay_s=delay_s), record)).start()
            stack.callback(served.stop)
            return served, record

        yield start


def two_workers(url: str, prompts: int, **limits) -> float:
    """Two engines generating at once, as two workers would; the wall time until both are done."""
    options = OpenAIOptions(base_url=url, model=MODEL, max_concurrency=4, timeout_s=30, **limits)
    engines = [load_engine(options) for _ in range(2)]
    threads = [threading.Thread(target=e.generate, args=([f"w{i}p{j}" for j in range(prompts)], PARAMS))
               for i, e in enumerate(engines)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e.usage.requests == prompts for e in engines)
    return time.perf_counter() - started


def test_a_concurrency_limit_of_one_serializes_two_workers(server, limit):
    served, record = server(delay_s=0.2)
    free = two_workers(served.url, 3)
    assert record.peak_in_flight == 6  # without the limit: both engines' 3 each, at once
    served, record = server(delay_s=0.2)
    limited = two_workers(served.url, 3, concurrency_limit=limit(1))
    assert record.peak_in_flight == 1 and record.received == 6
    assert limited >= 6 * 0.2 > free
    print(f"\nmeasured: 6 requests of 0.2 s from two workers, peak in flight 6 in {free:.2f} s unlimited; "
          f"1 in {limited:.2f} s under a limit of 1")


def test_a_rate_limit_spaces_the_requests_of_two_workers(server, limit):
    served, _ = server()
    started = time.perf_counter()
    two_workers(served.url, 3, rate_limit=limit(1, decay=5.0))  # one slot, freed every 0.2 s
    elapsed = time.perf_counter() - started
    assert elapsed >= 5 * 0.2  # six requests: five waits for a slot to decay
    print(f"\nmeasured: 6 requests at 5/s from two workers in {elapsed:.2f} s")


def test_a_limit_that_does_not_exist_stops_the_run_naming_it(server, prefect_api):
    served, record = server()
    engine = load_engine(OpenAIOptions(base_url=served.url, model=MODEL, concurrency_limit="no-such-limit"))
    with pytest.raises(LimitError, match=r"concurrency limit 'no-such-limit'.*prefect gcl create"):
        engine.generate(["p"], PARAMS)
    assert record.received == 0  # nothing was sent unthrottled
