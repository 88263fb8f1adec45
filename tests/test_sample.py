"""Stage `rollouts`: toy problems sampled from a policy served over HTTP on 127.0.0.1 (a scripted teacher that
knows the reference of every train problem): n completions per problem, shards dealt round-robin, stable ids,
tokens counted, and a landed shard recounted, not resampled."""

from __future__ import annotations

from collections import Counter

import pytest
from engines.openai_app import Faults, Record, Server, make_app
from teacher import UNKNOWN, ScriptedTeacher

from mathfactory.tasks.core import formatting
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines import OpenAIOptions
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS, SampleConfig, selected
from mathfactory.tasks.stage import Run, build, write_shard

MODEL = "policy"
TRAIN, TEST = toy.generate(12, "train", 3), toy.generate(6, "test", 3)


@pytest.fixture(scope="module")
def served():
    record = Record()
    server = Server(make_app(ScriptedTeacher({p.question: p.solution for p in TRAIN}), MODEL, Faults(), record,
                             max_model_len=4096)).start()
    yield server.url, record
    server.stop()


def config(url: str, **kw) -> SampleConfig:
    engine = OpenAIOptions(base_url=url, model=MODEL, timeout_s=30, max_retries=1)
    return SampleConfig(engine=engine, **{"n": 3, "max_new_tokens": 200, "problems_per_split": 5, "shards": 2, **kw})


def run_with_problems(tmp_path, name: str = "lake") -> Run:
    run = Run(lake=str(tmp_path / name), run_id="sample", seed=11)
    run.store.write_part(run.run_id, PROBLEMS.name, 0, PROBLEMS.record, [*TRAIN, *TEST])
    run.store.commit(run.run_id, PROBLEMS.name, PROBLEMS.record)
    return run


def test_every_selected_problem_gets_n_completions_from_the_served_policy(served, tmp_path):
    url, record = served
    run, cfg = run_with_problems(tmp_path), config(url)
    asked = record.received
    build(ROLLOUTS, cfg, run)
    rollouts = list(run.read(ROLLOUTS))
    chosen = TRAIN[:5] + TEST[:5]
    assert Counter(r.problem_id for r in rollouts) == {p.problem_id: 3 for p in chosen}
    by_id = {p.problem_id: p for p in chosen}
    for r in rollouts:
        p = by_id[r.problem_id]
        assert (r.split, r.level, r.prompt, r.policy) == (p.split, p.level, formatting.prompt(p.question), f"{url}#{MODEL}")
        # the scripted policy knows the train references and nothing else
        assert r.completion == (formatting.completion(p.solution) if p.split == "train" else UNKNOWN)
    assert len({r.rollout_id for r in rollouts}) == len(rollouts)
    bodies = record.bodies[asked:]  # one request per problem, asking for its n completions
    assert len(bodies) == 10 and {b["n"] for b in bodies} == {3} and {b["model"] for b in bodies} == {MODEL}
    marker = run.marker(ROLLOUTS.name)
    assert marker["rows"] == 30 and marker["metrics"]["tokens"] == sum(r.n_tokens for r in rollouts) > 0


def test_shards_deal_the_selected_problems_round_robin():
    cfg = SampleConfig(problems_per_split=5, shards=3)
    dealt = [[p.problem_id for p in selected(iter([*TRAIN, *TEST]), cfg, s)] for s in range(3)]
    chosen = [p.problem_id for p in TRAIN[:5] + TEST[:5]]
    assert sorted(sum(dealt, [])) == sorted(chosen) and [len(d) for d in dealt] == [4, 3, 3]


def test_the_same_inputs_give_the_same_rollouts_and_a_landed_shard_is_not_resampled(served, tmp_path):
    url, record = served
    first, again = run_with_problems(tmp_path, "a"), run_with_problems(tmp_path, "b")
    build(ROLLOUTS, config(url), first)
    summary = write_shard(ROLLOUTS, config(url), again, 1)
    asked = record.received
    assert write_shard(ROLLOUTS, config(url), again, 1) == summary  # recounted from its summary file
    assert record.received == asked
    build(ROLLOUTS, config(url), again)  # shard 0 is sampled, shard 1 kept
    assert sorted(first.read(ROLLOUTS), key=lambda r: r.rollout_id) == sorted(again.read(ROLLOUTS),
                                                                            key=lambda r: r.rollout_id)
