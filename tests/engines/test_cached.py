"""CachedEngine: a policy's answers kept per request, so a rerun asks the wrapped engine nothing it answered."""

import pytest
from teacher import ScriptedTeacher

from mathfactory.tasks.core import formatting
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.cached import CachedEngine
from mathfactory.tasks.storage import RequestCache

SOLUTIONS = {"What is 2+3?": "2+3=<<2+3=5>>5\n#### 5", "What is 4*2?": "4*2=<<4*2=8>>8\n#### 8"}
PARAMS = SamplingParams(n=3, temperature=0.8, max_new_tokens=64, seed=7)


class Counting:
    """The scripted policy, counting the prompts it is asked; fails on a prompt containing `fail`."""

    def __init__(self):
        self.policy, self.asked = ScriptedTeacher(SOLUTIONS, error_rate=0.4), []

    def generate(self, prompts, params):
        if any("fail" in p for p in prompts):
            raise RuntimeError("server gone")
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
