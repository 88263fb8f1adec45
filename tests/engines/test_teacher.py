"""Teacher + RequestCache against a real HTTP server (openai_app) backed by a deterministic problem writer."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, fields, replace

import pytest
from openai_app import Faults, Record, Server, make_app

from mathfactory.tasks.core.records import TeacherCall
from mathfactory.tasks.engines.base import Completion, SamplingParams, request_seeds
from mathfactory.tasks.engines.openai_engine import OpenAIEngine
from mathfactory.tasks.engines.teacher import Answer, Teacher, TeacherUsage, request_key
from mathfactory.tasks.storage import Lake, RequestCache

MODEL = "teacher-model"
PARAMS = SamplingParams(temperature=0.7, max_new_tokens=64, seed=5)
UNPARSEABLE = "unparseable: no 'Final Answer:' line"


class ProblemWriter:
    """Deterministic: a prompt gets a problem whose numbers come from the prompt's length and the seed.

    Prompts naming a fault misbehave: EMPTY answers whitespace, RAMBLE never writes a final answer, ONCE rambles
    only the first time it is asked."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            self.calls[prompt] += 1
            a, b = len(prompt), params.seed % 10
            if "EMPTY" in prompt:
                text = " \n"
            elif "RAMBLE" in prompt or ("ONCE" in prompt and self.calls[prompt] == 1):
                text = f" What is {a} + {b}?\nSolution:\nIt depends."
            else:
                text = f" What is {a} + {b}?\nSolution:\n{a} + {b} = {a + b}\nFinal Answer: {a + b}\n"
            out.append([Completion(text, len(text.split()) + 1, "stop")] * params.n)
        return out


def final_answer_line(text: str) -> str | None:
    return None if "\nFinal Answer:" in text else UNPARSEABLE


@pytest.fixture
def serve():
    """serve(**faults) -> (server, record): a fresh server per call, stopped after the test."""
    with ExitStack() as stack:

        def _serve(**faults) -> tuple[Server, Record]:
            record = Record()
            server = Server(make_app(ProblemWriter(), MODEL, Faults(**faults), record)).start()
            stack.callback(server.stop)
            return server, record

        yield _serve


def teacher_for(server: Server, cache: RequestCache, timeout_s: float = 10, **kwargs) -> Teacher:
    engine = OpenAIEngine(server.url, MODEL, backoff_s=0.01, timeout_s=timeout_s, max_retries=1)
    return Teacher(engine, cache, MODEL, **{"validate": final_answer_line, **kwargs})


@pytest.fixture
def cache(tmp_path) -> RequestCache:
    return RequestCache(str(tmp_path / "cache" / "teacher"))


# -- RequestCache --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "memory"])
def test_request_cache_round_trip(tmp_path, where):
    url = str(tmp_path / "c") if where == "local" else f"memory://cache-{tmp_path.name}/teacher"
    cache = RequestCache(url)
    assert cache.keys() == set() and cache.get("ab12") is None  # the folder does not exist yet
    cache.put("ab12", {"completion": "x² = 4 — so x = ±2", "attempts": 1})
    cache.put("ab13", {"completion": None})
    cache.put("cd00", {"n": 3})
    cache.put("ab12", {"completion": "replaced"})
    assert cache.keys() == {"ab12", "ab13", "cd00"}
    assert cache.get("ab12") == {"completion": "replaced"} and cache.get("ab13") == {"completion": None}
    assert RequestCache(url).keys() == {"ab12", "ab13", "cd00"}  # another handle (process) sees them
    with pytest.raises(ValueError, match="plain name"):
        cache.put("../escape", {})


def test_lake_request_cache_is_shared_by_every_run(tmp_path):
    for url in (str(tmp_path / "lake"), f"memory://lake-{tmp_path.name}"):
        Lake(url).request_cache("teacher").put("k1", {"v": 1})
        assert Lake(url).request_cache("teacher").get("k1") == {"v": 1}
        assert Lake(url).request_cache("other").keys() == set()
    assert (tmp_path / "lake" / "cache" / "teacher" / "k1" / "k1.json").is_file()


# -- keys and seeds ------------------------------------------------------------------------------------------


def test_request_key_is_pinned_and_covers_every_sampling_field():
    params = SamplingParams(temperature=0.7, max_new_tokens=512, stop=("\n\n\n",), seed=3)
    # Pinned: a change here re-keys every cache in every lake, and each cached request would be paid again.
    assert request_key("gpt-teacher", "Problem:", params) == "b82cfdeabb49d83f"
    changed = {"n": 2, "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 511, "stop": ("\n\n",), "seed": 4}
    assert set(changed) == {f.name for f in fields(SamplingParams)}
    keys = {request_key("gpt-teacher", "Problem:", replace(params, **{k: v})) for k, v in changed.items()}
    keys |= {request_key("gpt-teacher", "Problem: ", params), request_key("gpt-teacher-2", "Problem:", params)}
    assert len(keys) == len(changed) + 2 and request_key("gpt-teacher", "Problem:", params) not in keys


def test_answers_come_in_order_and_a_second_ask_is_free(serve, cache):
    server, record = serve()
    teacher = teacher_for(server, cache, max_concurrency=3)
    prompts = [f"seed text {i}" for i in range(6)]
    answers = teacher.ask(prompts, PARAMS)
    seeds = request_seeds(prompts, PARAMS.seed)
    # The engine derives its wire seed from the one it is given, as it does for every batch (here of one).
    wire = [request_seeds([p], s)[0] % 10 for p, s in zip(prompts, seeds, strict=True)]
    assert [a.completion for a in answers] == [
        f" What is {len(p)} + {w}?\nSolution:\n{len(p)} + {w} = {len(p) + w}\nFinal Answer: {len(p) + w}\n"
        for p, w in zip(prompts, wire, strict=True)]
    assert all(a.ok and a.reason == "ok" and a.attempts == 1 and not a.cached for a in answers)
    assert {b["n"] for b in record.bodies} == {1}
    assert [a.request_id for a in answers] == [
        request_key(MODEL, p, replace(PARAMS, seed=s)) for p, s in zip(prompts, seeds, strict=True)]
    assert cache.keys() == {a.request_id for a in answers}
    assert sum(a.prompt_tokens for a in answers) == record.prompt_tokens == 3 * 6  # "seed text i": 3 words
    assert sum(a.completion_tokens for a in answers) == record.completion_tokens > 0
    assert teacher.usage == TeacherUsage(requests=6, prompt_tokens=18, completion_tokens=record.completion_tokens)

    again = teacher.ask(prompts, PARAMS)
    assert record.received == 6  # nothing re-sent
    assert again == [replace(a, cached=True) for a in answers]  # costs as stored, flagged as cached
    assert teacher.usage.cached == 6 and teacher.usage.requests == 6


def test_an_answer_is_a_teacher_call_but_for_what_the_caller_knows(serve, cache):
    server, _ = serve()
    [answer] = teacher_for(server, cache).ask(["p"], PARAMS)
    call = TeacherCall(**asdict(answer), round=1, seed_id="s0", level="grade_school", prompt="p")
    assert call.completion == answer.completion and call.request_id == answer.request_id
    assert {f.name for f in fields(TeacherCall)} - {f.name for f in fields(Answer)} == {
        "round", "seed_id", "level", "prompt"}


def test_a_prompt_samples_the_same_in_any_batch(serve, tmp_path):
    server, record = serve()
    batch = teacher_for(server, RequestCache(str(tmp_path / "a"))).ask(["x", "yy", "x"], PARAMS)
    alone = teacher_for(server, RequestCache(str(tmp_path / "b"))).ask(["yy"], PARAMS)
    assert alone == [batch[1]]
    assert batch[0].request_id != batch[2].request_id  # a repeated prompt is a second request, not a copy
    assert record.received == 4


def test_prompt_tokens_are_per_request_on_every_choice(serve):
    server, record = serve()
    engine = OpenAIEngine(server.url, MODEL)
    [row] = engine.generate(["four words long prompt"], replace(PARAMS, n=3))
    assert [c.prompt_tokens for c in row] == [4, 4, 4] and record.prompt_tokens == 4


# -- resume --------------------------------------------------------------------------------------------------

CLIENT = """
import sys
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.openai_engine import OpenAIEngine
from mathfactory.tasks.engines.teacher import Teacher
from mathfactory.tasks.storage import RequestCache

url, cache = sys.argv[1:]
engine = OpenAIEngine(url, {model!r}, backoff_s=0.01, timeout_s=60, max_retries=1)
Teacher(engine, RequestCache(cache), {model!r}, max_concurrency=4).ask({prompts!r}, {params!r})
print("finished")  # never: the server hangs until the client is killed
"""


def test_a_killed_run_resumes_without_paying_twice(serve, tmp_path):
    m, n = 12, 5
    prompts = [f"excerpt {i}: a triangle has sides {i}, {i + 1}, {i + 2}" for i in range(m)]
    hanging, _ = serve(hang_after=n, hang_s=60)
    url = str(tmp_path / "cache")
    script = textwrap.dedent(CLIENT).format(model=MODEL, prompts=prompts, params=PARAMS)
    client = subprocess.Popen([sys.executable, "-c", script, hanging.url, url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(RequestCache(url).keys()) < n:
            assert client.poll() is None, f"the client exited early: {client.communicate()}"
            assert time.monotonic() < deadline, "the client never cached the answers it got"
            time.sleep(0.05)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    assert client.returncode == -signal.SIGKILL
    assert len(RequestCache(url).keys()) == n

    server, record = serve()
    teacher = teacher_for(server, RequestCache(url))
    answers = teacher.ask(prompts, PARAMS)
    assert record.received == m - n
    assert all(a.ok for a in answers) and sum(a.cached for a in answers) == n
    assert teacher.usage == TeacherUsage(requests=m - n, cached=n, prompt_tokens=record.prompt_tokens,
                                         completion_tokens=record.completion_tokens)
    assert len(RequestCache(url).keys()) == m


# -- failures ------------------------------------------------------------------------------------------------


def test_429_is_retried_by_the_engine_and_the_answer_is_ok(serve, cache):
    server, record = serve(fail_first=1, fail_status=429)
    [answer] = teacher_for(server, cache).ask(["p"], PARAMS)
    assert answer.ok and answer.attempts == 1 and record.statuses == [429, 200]


def test_500_every_time_fails_after_all_attempts_and_is_not_cached(serve, cache):
    server, record = serve(fail_first=1000, fail_status=500)
    teacher = teacher_for(server, cache, attempts=3)
    [answer] = teacher.ask(["p"], PARAMS)
    assert (answer.ok, answer.completion, answer.attempts) == (False, None, 3)
    assert answer.reason.startswith("HTTP 500: ") and server.url not in answer.reason
    assert record.received == 3 * (1 + 1)  # attempts x (max_retries + 1)
    assert cache.keys() == set()
    assert (teacher.usage.requests, teacher.usage.retries, teacher.usage.failed) == (3, 2, 1)


@pytest.mark.parametrize("body", ['{"choices": [{"index": 0, "te', '{"choices": [{"index": 0}]}', "<html>502</html>"])
def test_a_body_the_client_cannot_read_is_retried(serve, cache, body):
    server, record = serve(garbage_first=1, garbage_body=body)
    [answer] = teacher_for(server, cache).ask(["p"], PARAMS)
    assert answer.ok and answer.attempts == 2 and record.received == 2  # the engine itself does not retry it

    server, record = serve(garbage_first=1000, garbage_body=body)
    [answer] = teacher_for(server, cache, attempts=2).ask(["q"], PARAMS)
    assert not answer.ok and answer.reason.startswith("unreadable response") and record.received == 2


def test_an_empty_completion_is_rejected(serve, cache):
    server, record = serve()
    [answer] = teacher_for(server, cache, attempts=3, validate=None).ask(["EMPTY"], PARAMS)
    assert (answer.ok, answer.reason, answer.completion, answer.attempts) == (False, "empty", None, 3)
    assert len({b["seed"] for b in record.bodies}) == 3  # each attempt a new sample
    assert answer.completion_tokens == record.completion_tokens > 0  # paid for, though rejected


def test_a_rejected_text_is_retried_with_a_new_seed(serve, cache):
    server, record = serve()
    teacher = teacher_for(server, cache, attempts=3)
    once, ramble = teacher.ask(["ONCE", "RAMBLE"], PARAMS)
    assert once.ok and once.attempts == 2 and final_answer_line(once.completion) is None
    assert (ramble.ok, ramble.reason, ramble.attempts) == (False, UNPARSEABLE, 3)
    seeds = {p: [b["seed"] for b in record.bodies if b["prompt"] == p] for p in ("ONCE", "RAMBLE")}
    assert len(set(seeds["ONCE"])) == 2 and len(set(seeds["RAMBLE"])) == 3
    assert once.prompt_tokens == 2 and once.completion_tokens > 0  # both attempts were paid for
    assert cache.keys() == {once.request_id} and cache.get(once.request_id)["attempts"] == 2


def test_a_hanging_server_times_out(serve, cache):
    server, record = serve(hang_after=0, hang_s=5)
    t0 = time.perf_counter()
    [answer] = teacher_for(server, cache, timeout_s=0.3, attempts=2).ask(["p"], PARAMS)
    assert not answer.ok and answer.reason == "timeout (ReadTimeout)" and record.received == 4
    assert time.perf_counter() - t0 < 4


def test_bad_prompts_do_not_stop_good_ones_and_are_asked_again_on_rerun(serve, cache):
    server, record = serve()
    teacher = teacher_for(server, cache, attempts=2)
    prompts = ["good 0", "EMPTY", "good 2", "RAMBLE", "good 4"]
    answers = teacher.ask(prompts, PARAMS)
    assert [(a.ok, a.reason) for a in answers] == [
        (True, "ok"), (False, "empty"), (True, "ok"), (False, UNPARSEABLE), (True, "ok")]
    assert record.received == 3 + 2 * 2 and len(cache.keys()) == 3
    again = teacher.ask(prompts, PARAMS)
    assert [a.cached for a in again] == [True, False, True, False, True]
    assert record.received == 7 + 2 * 2


def test_a_bug_propagates(serve, cache):
    server, _ = serve()

    def broken(text: str) -> str | None:
        raise TypeError("validate is broken")

    with pytest.raises(TypeError, match="validate is broken"):
        teacher_for(server, cache, validate=broken).ask(["p", "q"], PARAMS)
    with pytest.raises(ValueError, match="n=2"):
        teacher_for(server, cache).ask(["p"], replace(PARAMS, n=2))


def test_concurrency_is_bounded(serve, cache):
    server, record = serve(delay_s=0.1)
    answers = teacher_for(server, cache, max_concurrency=3).ask([f"p{i}" for i in range(12)], PARAMS)
    assert all(isinstance(a, Answer) and a.ok for a in answers)
    assert record.peak_in_flight == 3


def test_usage_is_counted_from_many_threads(serve, cache):
    server, record = serve()
    teacher = teacher_for(server, cache, max_concurrency=8)
    callers = [threading.Thread(target=teacher.ask, args=([f"{t}-{i}" for i in range(10)], PARAMS)) for t in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert teacher.usage.requests == record.received == 30
    assert teacher.usage.completion_tokens == record.completion_tokens
