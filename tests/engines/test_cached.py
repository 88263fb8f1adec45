"""CachedEngine: a policy's answers kept per request, so a rerun asks the wrapped engine nothing it answered."""

import pytest
from teacher import ScriptedTeacher

from mathfactory.tasks.core import formatting
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.cached import CachedEngine, RequestsRefused
from mathfactory.tasks.engines.openai_engine import EngineHTTPError
from mathfactory.tasks.storage import RequestCache

SOLUTIONS = {"What is 2+3?": "2+3=<<2+3=5>>5\n#### 5", "What is 4*2?": "4*2=<<4*2=8>>8\n#### 8"}
PARAMS = SamplingParams(n=3, temperature=0.8, max_new_tokens=64, seed=7)


class Counting:
    """The scripted policy, counting the prompts it answers and its calls; a prompt with `fail` fails the call, one
    with `long` is refused as a bad request (HTTP 400), one with `unknown` gets a 404."""

    def __init__(self):
        self.policy, self.asked, self.calls = ScriptedTeacher(SOLUTIONS, error_rate=0.4), [], 0

    def generate(self, prompts, params):
        self.calls += 1
        if any("fail" in p for p in prompts):
            raise RuntimeError("server gone")
        for status, word in ((400, "long"), (404, "unknown")):  # a prompt too long; a model the server lacks
            if any(word in p for p in prompts):
                raise EngineHTTPError(f"POST x -> HTTP {status}", f"HTTP {status}: no", status)
        self.asked += prompts
        return self.policy.generate(prompts, params)


def prompts() -> list[str]:
    q1, q2 = (formatting.prompt(q) for q in SOLUTIONS)
    return [q1, q2, q1]  # a prompt twice in a batch: two requests (request_seeds gives each its own seed)


def test_a_rerun_is_answered_from_the_cache(tmp_path):
    inner = Counting()
    first = CachedEngine(inner, RequestCache(str(tmp_path)), "m").generate(prompts(), PARAMS)
    assert len(inner.asked) == 3 and len(RequestCache(str(tmp_path)).keys()) == 3
    again = CachedEngine(inner, RequestCache(str(tmp_path)), "m")
    assert again.generate(prompts(), PARAMS) == first
    assert len(inner.asked) == 3 and (again.usage.cached, again.usage.asked) == (3, 0)
    # Another model, seed or budget is another request.
    CachedEngine(inner, RequestCache(str(tmp_path)), "other").generate(prompts()[:1], PARAMS)
    CachedEngine(inner, RequestCache(str(tmp_path)), "m").generate(prompts()[:1], SamplingParams(n=3, seed=8))
    assert len(inner.asked) == 5


def test_a_failed_chunk_keeps_the_chunks_answered_before_it(tmp_path):
    inner = Counting()
    batch = [*prompts()[:2], formatting.prompt("fail")]
    with pytest.raises(RuntimeError):
        CachedEngine(inner, RequestCache(str(tmp_path)), "m", chunk=2).generate(batch, PARAMS)
    rerun = CachedEngine(inner, RequestCache(str(tmp_path)), "m", chunk=2)
    assert len(rerun.generate(batch[:2], PARAMS)) == 2
    assert (rerun.usage.cached, rerun.usage.asked) == (2, 0)


def test_prompts_refused_as_bad_requests_are_found_and_the_rest_answered(tmp_path):
    inner = Counting()
    good = [formatting.prompt(f"What is {i}+1?") for i in range(6)]
    bad = [formatting.prompt("long " * 50), formatting.prompt("so long " * 50)]
    batch = [*good[:3], bad[0], *good[3:], bad[1]]
    with pytest.raises(RequestsRefused) as refused:
        CachedEngine(inner, RequestCache(str(tmp_path)), "m").generate(batch, PARAMS)
    assert refused.value.refused == dict.fromkeys(bad, "HTTP 400: no")
    assert sorted(inner.asked) == sorted(good) and inner.calls < 2 * len(batch)  # halves, not one by one
    rerun = CachedEngine(inner, RequestCache(str(tmp_path)), "m")
    assert len(rerun.generate(good, PARAMS)) == 6 and rerun.usage.asked == 0
    with pytest.raises(EngineHTTPError, match="404"):  # a wrong model name is the run's fault, not a prompt's
        CachedEngine(inner, RequestCache(str(tmp_path)), "m").generate([formatting.prompt("unknown")], PARAMS)
