"""Stage credit end to end on the shared credit world (tests/credit_world.py): the exact teacher makes Monte-Carlo Q
exact, so the first pit must be the slipped step, always; the noisy one makes Q an unbiased estimate."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from credit_world import (  # fixtures: world, served, runs
    SEED,
    SHARDS,
    Finished,
    M,
    credit_config,
    prefix,
    seed_run,
)
from teacher import ScriptedTeacher, wrong_completion

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.core.strategies import STRATEGIES
from mathfactory.tasks.credit import CREDIT
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.judge import Judge
from mathfactory.tasks.pairs import DATASETS, SETS, PairsConfig
from mathfactory.tasks.stage import Run, build, commit, write_shard
from mathfactory.tasks.storage import Lake

# --- the teacher itself ----------------------------------------------------------------------------------------


def test_teacher_q_is_one_exactly_on_reference_prefixes(world):
    p = next(p for p in world.problems if p.level == "competition")
    teacher = ScriptedTeacher({p.question: p.solution})
    reference = formatting.completion(p.solution)
    lines = reference.splitlines(keepends=True)
    n = len(lines) - 1  # the `####` line belongs to the last step
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=200, stop=formatting.STOP, seed=5)
    slipped = wrong_completion(p.solution, 4).splitlines(keepends=True)
    prompts = [formatting.prompt(p.question) + "".join(src[:i]) for src in (lines, slipped) for i in range(n)]
    outs = teacher.generate(prompts, params)
    with Judge() as judge:
        grades = [
            [judge.grade(p.answer, pr.partition("\nAnswer:\n")[2] + c.text).correct for c in cs]
            for pr, cs in zip(prompts, outs, strict=True)
        ]
    expected = [True] * n + [i < 4 for i in range(n)]  # a slipped prefix is a reference prefix until step 4
    assert grades == [[q] * 3 for q in expected]
    assert [teacher.true_q(pr) for pr in prompts] == [float(q) for q in expected]
    assert outs[0][0].text == reference and outs[n - 1][0].text == "".join(lines[n - 1 :])
    assert all(c.finish_reason == "stop" and c.n_tokens == len(c.text.split()) + 1 for cs in outs for c in cs)
    [[cut]] = teacher.generate(prompts[:1], SamplingParams(max_new_tokens=5))
    assert (cut.finish_reason, cut.n_tokens, len(cut.text.split())) == ("length", 5, 5)
    assert (
        teacher.generate([formatting.prompt("What is 1+1?")], params)[0][0].text
        == "I do not know this question.\n"
    )


def test_noisy_teacher_samples_its_true_q(world):
    p = next(p for p in world.problems if p.level == "college")
    teacher = ScriptedTeacher({p.question: p.solution}, error_rate=0.2)
    lines = formatting.completion(p.solution).splitlines(keepends=True)
    prompt = formatting.prompt(p.question) + "".join(lines[:5])
    steps_left = len(lines) - 1 - 5
    [sampled] = teacher.generate(
        [prompt], SamplingParams(n=2000, temperature=1.0, max_new_tokens=200, seed=1)
    )
    with Judge() as judge:
        q = sum(g.correct for g in judge.grade_many((p.answer, "".join(lines[:5]) + c.text) for c in sampled))
    assert teacher.true_q(prompt) == pytest.approx(0.8**steps_left)
    assert q / 2000 == pytest.approx(0.8**steps_left, abs=0.04)  # ~4 standard errors; seeded, so stable
    [greedy] = teacher.generate([prompt], SamplingParams(n=3, temperature=0, max_new_tokens=200))
    assert {c.text for c in greedy} == {"".join(lines[5:])}


# --- the credit stage -------------------------------------------------------------------------------------------


def test_the_fixture_has_long_rollouts_and_varied_slips(world):
    long = [r for r in world.creditable_wrong() if len(split_steps(r.completion)) >= 8]
    assert len(long) >= 6 and len({world.slip[r.rollout_id] for r in long}) >= 4
    assert len({world.solve_rate(pid) for pid in world.train} - {0.0}) >= 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_first_pit_is_the_slipped_step_and_q_is_exact(runs, world, served, strategy):
    run, teacher = runs(strategy), served["exact"].teacher
    for r in world.creditable_wrong():
        rows = run.credits[r.rollout_id]
        n = len(split_steps(r.completion))
        assert [i for i, row in rows.items() if row.is_pit] == [world.slip[r.rollout_id]], r.completion
        assert {0, n} <= set(rows) <= set(range(n + 1))
        assert {row.strategy for row in rows.values()} == {strategy}
        for i, row in rows.items():
            if 0 < i < n:  # sampled steps: the estimate is the teacher's true Q (0 or 1)
                true_q = teacher.true_q(prefix(r, row))
                assert true_q == float(i < world.slip[r.rollout_id])
                assert r.completion[: row.end].rstrip("\n").endswith(row.step_text)
                if row.n_continuations == M:  # all M drawn: an estimate
                    assert row.q == true_q and row.n_correct == M * true_q
                else:  # scan/binary stopped at the first success: Q > 0 is known, Q is not
                    assert strategy != "linear" and row.q is None and row.n_correct >= 1 and true_q == 1
        assert rows[n].q == 0.0 and rows[n].end == len(r.completion)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_q0_is_the_fraction_of_its_problems_rollouts_that_verify(runs, world, strategy):
    run = runs(strategy)
    credited = world.creditable_wrong() + world.correct_train()
    assert {r.rollout_id for r in credited} == set(run.credits)
    assert world.unsolved in {r.problem_id for r in credited}
    for r in credited:
        row = run.credits[r.rollout_id][0]
        assert row.q == pytest.approx(world.solve_rate(r.problem_id))
        assert row.n_correct == sum(x.rollout_id in world.correct for x in world.of(r.problem_id))
        assert row.n_continuations == len(world.of(r.problem_id))  # the empty rollout counts as sampled
        assert (row.step_text, row.end, row.advantage) == ("", 0, None)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_correct_rollouts_get_full_linear_credit(runs, world, strategy):
    run = runs(strategy)
    for r in world.correct_train():
        rows = run.credits[r.rollout_id]
        n = len(split_steps(r.completion))
        q0 = world.solve_rate(r.problem_id)
        assert sorted(rows) == list(range(n + 1))
        assert {row.strategy for row in rows.values()} == {"linear"}
        assert not any(row.is_pit for row in rows.values())
        assert [rows[i].q for i in range(1, n + 1)] == [1.0] * n
        assert [rows[i].advantage for i in range(n + 1)] == pytest.approx([None, 1 - q0] + [0.0] * (n - 1))
        assert [rows[i].n_continuations for i in range(1, n + 1)] == [M] * (n - 1) + [0]
        assert all(rows[i].correct_continuation == r.completion[rows[i].end :] for i in range(1, n))


def test_binary_samples_fewer_continuations_than_linear_on_long_rollouts(runs, world):
    cost = {s: {} for s in STRATEGIES}
    for strategy in STRATEGIES:
        run = runs(strategy)
        for r in world.creditable_wrong():
            if len(split_steps(r.completion)) >= 8:
                cost[strategy][r.rollout_id] = sum(
                    row.n_continuations for i, row in run.credits[r.rollout_id].items() if i
                )
    for rid, linear in cost["linear"].items():
        n = len(split_steps(next(r.completion for r in world.rollouts if r.rollout_id == rid)))
        assert linear == M * (n - 1)
        assert cost["binary"][rid] < linear and cost["scan"][rid] <= linear
    assert sum(cost["binary"].values()) < sum(cost["scan"].values()) < sum(cost["linear"].values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_stage_counts_what_the_server_served(runs, world, strategy):
    run = runs(strategy)
    served_n = sum(body["n"] for body in run.bodies)
    assert sum(s["continuations"] for s in run.shards) == served_n > 0
    assert all(s["rollouts"] > 0 for s in run.shards)  # both shards have problems to credit
    assert (
        sum(row.n_continuations for rows in run.credits.values() for i, row in rows.items() if i) == served_n
    )
    train = tuple(formatting.prompt(p.question) for p in world.train.values())
    assert all(body["prompt"].startswith(train) for body in run.bodies)
    assert any(body["prompt"].startswith(formatting.prompt(world.train[world.unsolved].question)) for body in run.bodies)
    # Every draw from a prefix is a fresh one: repeated prompts (other rollouts' shared prefixes, or later
    # rounds of a probe) never get a seed twice, or a probe would see the same continuations again.
    seeds: dict[str, list[int]] = {}
    for body in run.bodies:
        seeds.setdefault(body["prompt"], []).append(body["seed"])
    assert any(len(s) > 1 for s in seeds.values())
    assert all(len(set(s)) == len(s) for s in seeds.values())
    marker = run.marker("credit")
    metrics = marker["metrics"]
    assert marker["rows"] == sum(len(rows) for rows in run.credits.values())
    assert metrics["continuations"] == served_n and metrics["tokens"] == run.completion_tokens
    assert metrics["pits"] == metrics["wrong"] == len(world.creditable_wrong())
    assert metrics["unsolved"] == len(world.of(world.unsolved))
    assert metrics["rollouts"] == len(run.credits)
    # Pits on the last step: the rollouts that slipped there (slipped_steps always includes the last step).
    last = [r for r in world.creditable_wrong() if world.slip[r.rollout_id] == len(split_steps(r.completion))]
    assert metrics["pit_final"] == len(last) > 0
    assert (metrics["strategy"], metrics["pit"], metrics["m"], metrics["k"]) == (strategy, "first_zero", M, 1)


def test_unsolved_false_leaves_out_exactly_the_never_solved_questions_rollouts(runs, world):
    every, solved = runs("linear"), runs("linear", unsolved=False)
    left_out = {r.rollout_id for r in world.of(world.unsolved)} - {world.empty}
    assert left_out and set(every.credits) - set(solved.credits) == left_out
    assert {k: every.credits[k] for k in solved.credits} == solved.credits  # the rest credited as before
    assert solved.marker("credit")["metrics"]["not_credited"] == {"no_steps": 1, "unsolved": len(left_out)}
    assert solved.marker("credit")["metrics"]["unsolved"] == 0
    for name in ("dpo_step_cut", "dpo_step_prefix"):
        assert solved.datasets[name] and not {p.rejected_rollout_id for p in solved.datasets[name]} & left_out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_and_test_rollouts_are_not_credited_unsolved_ones_are(runs, world, strategy):
    run = runs(strategy)
    assert run.marker("credit")["metrics"]["not_credited"] == {"no_steps": 1}
    assert sum((Counter(s.get("refused", {})) for s in run.shards), Counter()) == Counter(no_steps=1)
    assert world.empty not in run.credits
    problems = {row.problem_id for rows in run.credits.values() for row in rows.values()}
    assert world.unsolved in problems and world.test_problem not in problems
    for r in world.of(world.unsolved):  # Q_0 = 0 is an estimate: the pit is still the slip
        rows = run.credits[r.rollout_id]
        assert (rows[0].q, rows[0].n_correct) == (0.0, 0)
        assert [i for i, row in rows.items() if row.is_pit] == [world.slip[r.rollout_id]]


def test_noisy_teacher_q_estimates_are_unbiased(runs, world, served):
    """A teacher with stochastic Q = (1 - e)^(steps left): linear's estimates scatter around the true Q."""
    run, teacher = runs("linear", teacher="noisy", m=8), served["noisy"].teacher
    errors, by_id = [], {r.rollout_id: r for r in world.rollouts}
    for rid, rows in run.credits.items():
        r = by_id[rid]
        n = len(split_steps(r.completion))
        for i, row in rows.items():
            if 0 < i < n:
                true_q = teacher.true_q(prefix(r, row))
                if rid in world.slip and i >= world.slip[rid]:
                    assert row.q == true_q == 0.0  # past the slip no continuation can verify
                else:
                    assert 0 < true_q < 1
                    errors.append(row.q - true_q)
    assert len(errors) >= 60
    assert abs(sum(errors) / len(errors)) < 0.06  # ~3 standard errors of a mean of 60+ with sd <= 0.18 each
    assert sum(map(abs, errors)) / len(errors) < 0.2
    assert any(e != 0 for e in errors)  # it is noisy: not the exact teacher's 0/1 again


# --- reruns ------------------------------------------------------------------------------------------------------


def test_rerun_does_nothing_new(runs, served):
    run = runs("binary")
    record = served["exact"].record
    stages = ["credit", *DATASETS]
    markers = {name: run.marker(name) for name in stages}
    parts = {
        p: run.lake.fs.info(p)["mtime"]
        for name in stages
        for p in run.lake.fs.glob(f"{run.lake.stage_path(run.run_id, name)}/part-*.parquet")
    }
    requests = record.received
    again = Run(lake=run.lake.url, run_id=run.run_id, seed=SEED)
    assert build(CREDIT, run.cfg, again) == run.lake.uri(run.run_id, "credit")
    uris = {name: build(spec, PairsConfig(), again) for name, spec in SETS.items()}
    assert uris == {name: run.lake.uri(run.run_id, name) for name in DATASETS}
    assert record.received == requests
    assert {name: run.marker(name) for name in stages} == markers
    assert {p: run.lake.fs.info(p)["mtime"] for p in parts} == parts


@pytest.fixture(scope="module")
def resumed(world, served, tmp_path_factory) -> tuple[Finished, list[dict], int]:
    """A scan run whose shards all landed, then ran again before the commit (a flow resumed after a crash):
    (the run committed from the second summaries, the first summaries, requests the second pass made)."""
    lake, run_id, s = str(tmp_path_factory.mktemp("resumed")), "resumed", served["exact"]
    seed_run(lake, run_id, world)
    cfg, started, run = credit_config(s, strategy="scan"), time.time(), Run(lake=lake, run_id=run_id, seed=SEED)
    first = [write_shard(CREDIT, cfg, run, shard) for shard in range(SHARDS)]
    requests = s.record.received
    again = [write_shard(CREDIT, cfg, run, shard) for shard in range(SHARDS)]
    requests = s.record.received - requests
    commit(CREDIT, cfg, run, again, started)
    return Finished(Lake(lake), run_id, cfg, again, {}, {}, [], 0), first, requests


def test_a_resumed_shard_reports_what_landed_without_sampling(resumed):
    run, first, requests = resumed
    assert requests == 0
    keys = ("shard", "rollouts", "wrong", "unsolved", "pits", "pit_final", "continuations")
    assert [{k: s[k] for k in keys} for s in run.shards] == [{k: s[k] for k in keys} for s in first]
    metrics = run.marker("credit")["metrics"]
    assert metrics["continuations"] == sum(s["continuations"] for s in first)
    assert metrics["pits"] == sum(s["pits"] for s in first)


def test_a_resumed_stage_still_counts_what_it_did_not_credit(resumed, world):
    run, first, _ = resumed
    expected = {"no_steps": 1}
    assert sum((Counter(s.get("refused", {})) for s in first), Counter()) == Counter(expected)  # per shard
    assert run.marker("credit")["metrics"]["not_credited"] == expected
