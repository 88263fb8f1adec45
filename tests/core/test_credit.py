"""Per-step credit: Q/BoK/advantage/pit arithmetic as tables, the three strategies against scripted and simulated
samplers (each rollout has a known true Q per step), and the batching driver."""

import itertools
import math
import random
from dataclasses import replace

import pytest

from mathfactory.tasks.core.credit import (
    Target,
    advantages,
    best_of_k,
    check,
    credit,
    credit_rows,
    first_zero,
    max_drop,
    repit,
    stepwise_example,
    tally,
)
from mathfactory.tasks.core.steps import Step
from mathfactory.tasks.core.strategies import Continuation, label_all, labeler


def brute_best_of_k(c, m, k):
    """Of every way to choose K of the m draws (c of them verified), the fraction holding a verified one."""
    draws = [True] * c + [False] * (m - c)
    subsets = list(itertools.combinations(draws, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("m", range(1, 9))
def test_best_of_k_is_the_enumerated_chance_that_k_of_the_m_draws_hold_a_success(m):
    for k in range(1, m + 1):
        for c in range(m + 1):
            assert best_of_k(c, m, k) == pytest.approx(brute_best_of_k(c, m, k)), (c, m, k)


@pytest.mark.parametrize("q", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("m, k", [(5, 5), (8, 5), (4, 2), (8, 1)])
def test_best_of_k_is_unbiased_where_the_plug_in_is_not(q, m, k):
    """E over c ~ Binomial(m, q) of the estimate is exactly 1 - (1 - q)^K; plugging c/m into it is not."""
    pmf = [math.comb(m, c) * q**c * (1 - q) ** (m - c) for c in range(m + 1)]
    truth = 1 - (1 - q) ** k
    assert sum(p * best_of_k(c, m, k) for c, p in enumerate(pmf)) == pytest.approx(truth)
    plug_in = sum(p * (1 - (1 - c / m) ** k) for c, p in enumerate(pmf))
    assert k == 1 or plug_in < truth  # biased low: Jensen, 1 - (1 - x)^K is concave


@pytest.mark.parametrize("c, m, k", [(1, 4, 0), (1, 4, 5), (5, 4, 1), (-1, 4, 1)])
def test_best_of_k_refuses_what_it_cannot_estimate(c, m, k):
    with pytest.raises(ValueError):
        best_of_k(c, m, k)


@pytest.mark.parametrize(
    "q_values, expected",
    [
        ({0: 0.5, 1: 0.75, 2: 0.25, 3: 0.0}, {0: None, 1: 0.25, 2: -0.5, 3: -0.25}),
        ({0: 0.5, 2: 0.25, 3: 0.0, 5: 0.0}, {0: None, 2: None, 3: -0.25, 5: None}),  # step i-1 unlabelled
        ({0: 0.5, 1: None, 2: 0.0, 3: 0.0}, {0: None, 1: None, 2: None, 3: 0.0}),  # no estimate at step 1
        ({0: None, 1: 1.0}, {0: None, 1: None}),
        ({0: 1.0}, {0: None}),
    ],
)
def test_advantages_only_between_two_estimates(q_values, expected):
    assert advantages(q_values) == pytest.approx(expected)


@pytest.mark.parametrize(
    "correct, zero",
    [
        ({0: 2, 1: 3, 2: 1, 3: 1, 4: 0}, 4),  # no sampled step hit 0: the last step, the verdict
        ({0: 2, 1: 2, 2: 0, 3: 1, 4: 0}, 2),
        ({0: 0, 1: 0, 3: 0}, 1),  # an unsolved question: step 0 is never the pit
        ({0: 2}, None),
    ],
)
def test_first_zero(correct, zero):
    assert first_zero(correct) == zero


@pytest.mark.parametrize(
    "adv, drop",
    [
        ({0: None, 1: 0.5, 2: -0.25, 3: -0.5, 4: 0.0, 5: -0.25}, 3),
        ({0: None, 1: -0.5, 2: 0.0, 3: -0.5}, 1),  # the first of equals
        ({0: None, 1: None, 2: -0.1, 3: None}, 2),
        ({0: None, 1: None}, None),
    ],
)
def test_max_drop(adv, drop):
    assert max_drop(adv) == drop


# --- strategies against a scripted sampler: a continuation from step i verifies iff i < the true first zero -----


def steps_of(n):
    return tuple(Step(f"step {i}", 7 * (i - 1), 7 * i) for i in range(1, n + 1))


def target(key, n, correct=False, solved=3, sampled=4):
    return Target(key, f"p-{key}", steps_of(n), correct, solved, sampled)


class Scripted:
    """Continuations from step i verify iff i < zero[key]; records every call."""

    def __init__(self, zero):
        self.zero, self.calls = zero, []

    def __call__(self, requests):
        self.calls.append(requests)
        return [
            [Continuation(i < self.zero[key], f"{key}:{i}:{j}") for j in range(k)] for key, i, k in requests
        ]


def by_step(rows):
    return {r.step_index: r for r in rows}


def test_binary_visits_the_bisection_path_and_finds_the_first_zero():
    sample = Scripted({"r": 7})
    rows, reasons = credit([target("r", 10)], sample, strategy="binary", m=8, round_size=2)
    assert not reasons
    got = by_step(rows)
    assert list(got) == [0, 5, 6, 7, 10]  # lo=0 hi=10 -> 5 ok -> 7 zero -> 6 ok
    assert [s for call in sample.calls for _, s, _ in call] == [5, 7, 7, 7, 7, 6]
    assert {i: r.n_continuations for i, r in got.items()} == {0: 4, 5: 2, 6: 2, 7: 8, 10: 0}
    assert {i: r.n_correct for i, r in got.items()} == {0: 3, 5: 2, 6: 2, 7: 0, 10: 0}
    # Steps 5 and 6 stopped at their first success: Q > 0 is known, Q is not; step 7 drew all 8.
    assert {i: r.q for i, r in got.items()} == {0: 0.75, 5: None, 6: None, 7: 0.0, 10: 0.0}
    assert {i: r.advantage for i, r in got.items()} == dict.fromkeys(got)
    assert [i for i, r in got.items() if r.is_pit] == [7]
    assert got[6].correct_continuation == "r:6:0" and got[7].correct_continuation is None
    assert (got[7].step_text, got[7].end, got[0].step_text, got[0].end) == ("step 7", 49, "", 0)
    assert {r.strategy for r in rows} == {"binary"}


@pytest.mark.parametrize(
    "strategy, visited",
    [("linear", list(range(1, 10))), ("scan", list(range(1, 8))), ("binary", [5, 6, 7])],
)
def test_each_strategy_finds_the_same_pit(strategy, visited):
    rows, _ = credit([target("r", 10)], Scripted({"r": 7}), strategy=strategy)
    got = by_step(rows)
    assert sorted(got) == [0, *visited, 10]
    assert [i for i, r in got.items() if r.is_pit] == [7]


def test_linear_labels_every_step_with_m_continuations():
    rows, _ = credit([target("r", 5)], Scripted({"r": 3}), strategy="linear", m=4)
    got = by_step(rows)
    assert {i: r.n_continuations for i, r in got.items()} == {0: 4, 1: 4, 2: 4, 3: 4, 4: 4, 5: 0}
    assert {i: r.advantage for i, r in got.items()} == {0: None, 1: 0.25, 2: 0.0, 3: -1.0, 4: 0.0, 5: 0.0}


def test_best_of_k_applies_to_every_estimated_q_and_its_advantage():
    rows, _ = credit([target("r", 3, solved=1, sampled=4)], Scripted({"r": 2}), strategy="linear", m=8, k=2)
    got = by_step(rows)
    assert got[0].q == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5, where 1 - 0.75^2 = 0.44
    assert (got[1].q, got[2].q, got[3].q) == (1.0, 0.0, 0.0)
    assert got[1].advantage == pytest.approx(0.5)
    assert got[2].is_pit


def test_q0_from_fewer_rollouts_than_k_is_no_estimate():
    rows, _ = credit([target("r", 3, solved=1, sampled=2)], Scripted({"r": 2}), strategy="linear", m=8, k=5)
    got = by_step(rows)
    assert (got[0].q, got[0].n_correct, got[0].n_continuations) == (None, 1, 2)
    assert got[1].advantage is None and got[2].advantage == -1.0 and got[2].is_pit


class Counts:
    """Continuations from step i of rollout key verify for the first c[key][i] of each request's draws."""

    def __init__(self, c):
        self.c = c

    def __call__(self, requests):
        return [[Continuation(j < self.c[key][i], f"{key}:{i}:{j}") for j in range(k)] for key, i, k in requests]


def test_max_drop_and_first_zero_pick_the_steps_the_table_says():
    # Q_0 = 2/4; Q_1..4 = 4/4, 3/4, 1/4, 1/4; Q_5 = 0 (the verdict). A = +.5, -.25, -.5, 0, -.25.
    sample = Counts({"r": {1: 4, 2: 3, 3: 1, 4: 1}})
    t = target("r", 5, solved=2, sampled=4)
    drop, _ = credit([t], sample, strategy="linear", m=4, pit="max_drop")
    zero, _ = credit([t], sample, strategy="linear", m=4, pit="first_zero")
    assert [r.advantage for r in drop] == [None, 0.5, -0.25, -0.5, 0.0, -0.25]
    assert [r.step_index for r in drop if r.is_pit] == [3]
    assert [r.step_index for r in zero if r.is_pit] == [5]  # no sampled step reached 0: the whole solution
    assert tally(zero) == {"rollouts": 1, "wrong": 1, "unsolved": 0, "pits": 1, "pit_final": 1,
                           "continuations": 16}
    assert tally(drop)["pit_final"] == 0


@pytest.mark.parametrize("strategy, pit, m, k", [("binary", "max_drop", 8, 1), ("scan", "max_drop", 8, 1),
                                                 ("linear", "first_zero", 4, 5), ("linear", "lowest", 8, 1)])
def test_settings_under_which_q_or_the_pit_is_undefined_are_refused(strategy, pit, m, k):
    with pytest.raises(ValueError):
        check(strategy, pit, m, k)
    with pytest.raises(ValueError):
        credit([target("r", 3)], Scripted({"r": 2}), strategy=strategy, pit=pit, m=m, k=k)


def test_correct_rollouts_have_no_pit_and_only_linear_samples_them():
    for strategy, indices in [("linear", [0, 1, 2, 3, 4]), ("scan", [0, 4]), ("binary", [0, 4])]:
        sample = Scripted({"r": 99})
        rows, _ = credit([target("r", 4, correct=True)], sample, strategy=strategy)
        assert [r.step_index for r in rows] == indices
        assert not any(r.is_pit for r in rows) and rows[-1].q == 1.0
        assert bool(sample.calls) == (strategy == "linear")


def test_uncreditable_rollouts_come_back_as_reasons():
    targets = [
        target("ok", 3),
        Target("empty", "p", (), False, 1, 4),
        target("long", 17),
        target("one", 1),
    ]
    sample = Scripted({"ok": 2, "one": 1})
    rows, reasons = credit(targets, sample, strategy="binary", max_steps=16)
    assert reasons == {"no_steps": 1, "too_many_steps": 1}
    assert {r.rollout_id for r in rows} == {"ok", "one"}
    one = [r for r in rows if r.rollout_id == "one"]
    assert [(r.step_index, r.q, r.is_pit) for r in one] == [(0, 0.75, False), (1, 0.0, True)]  # nothing sampled
    assert {key for call in sample.calls for key, _, _ in call} == {"ok"}


@pytest.mark.parametrize("strategy", ["linear", "scan", "binary"])
def test_wrong_rollouts_of_a_never_solved_question_are_credited(strategy):
    """Q_0 = 0 of 4 samples is an estimate; the steps before the slip still lead somewhere (true first zero 3)."""
    rows, reasons = credit([target("u", 6, solved=0, sampled=4)], Scripted({"u": 3}), strategy=strategy, m=4)
    got = by_step(rows)
    assert not reasons
    assert (got[0].q, got[0].n_correct) == (0.0, 0)
    assert [i for i, r in got.items() if r.is_pit] == [3]
    assert tally(rows)["unsolved"] == 1


def test_binary_on_a_never_solved_question_with_no_success_ends_at_step_1():
    rows, _ = credit([target("u", 6, solved=0, sampled=4)], Scripted({"u": 0}), strategy="binary", m=4)
    assert [r.step_index for r in rows if r.is_pit] == [1]
    assert [r.step_index for r in rows] == [0, 1, 3, 6]  # 3 then 1 probed, each all 4 draws


def test_unknown_strategy_and_duplicate_rollouts():
    with pytest.raises(ValueError):
        credit([target("r", 3)], Scripted({"r": 2}), strategy="greedy")
    with pytest.raises(ValueError):
        credit([target("r", 3), target("r", 3)], Scripted({"r": 2}))


# --- the batching driver ---------------------------------------------------------------------------------


def test_label_all_batches_every_rollout_into_one_call_per_round():
    sample = Scripted({"a": 3, "b": 2, "c": 4})
    labelers = {
        "a": labeler("linear", 4, False, m=2),
        "b": labeler("linear", 3, False, m=2),
        "c": labeler("binary", 8, False, m=2, round_size=1),
    }
    seen = label_all(labelers, sample)
    # round 1 holds all of linear's requests and binary's first probe (step 4); binary then needs more rounds
    assert sample.calls[0] == [("a", 1, 2), ("a", 2, 2), ("a", 3, 2), ("b", 1, 2), ("b", 2, 2), ("c", 4, 1)]
    assert sample.calls[1:] == [[("c", 4, 1)], [("c", 2, 1)], [("c", 3, 1)]]  # step 4 is a zero: both draws
    assert {key: sorted(s) for key, s in seen.items()} == {"a": [1, 2, 3], "b": [1, 2], "c": [2, 3, 4]}
    assert [c.correct for c in seen["c"][4]] == [False, False]


def test_label_all_refuses_a_sampler_that_returns_the_wrong_count():
    with pytest.raises(ValueError):
        label_all(
            {"a": labeler("linear", 3, False, m=2)}, lambda reqs: [[Continuation(True, "")] for _ in reqs]
        )


def test_stepwise_example_labels_steps_before_the_pit_true():
    t = target("r", 5)
    rows, _ = credit([t], Scripted({"r": 3}), strategy="binary")
    ex = stepwise_example("Q?", t.steps, [r for r in rows if r.rollout_id == "r"])
    assert (ex.rollout_id, ex.prompt) == ("r", "Q?")
    assert ex.completions == ["step 1", "step 2", "step 3", "step 4", "step 5"]
    assert ex.labels == [True, True, False, False, False]
    correct = target("c", 3, correct=True)
    rows, _ = credit([correct], Scripted({"c": 9}), strategy="binary")
    assert stepwise_example("Q?", correct.steps, rows).labels == [True, True, True]


# --- simulated traces: a known true Q per step, continuations drawn as Bernoulli(Q_true) ----------------------


def traces(n_cases, seed):
    """Incorrect rollouts with a non-increasing true Q that first hits 0 at a known step (Q_n = 0). Before it,
    Q >= 0.7, so 8 draws all fail with odds 0.3^8: every strategy should find the true zero."""
    rng = random.Random(seed)
    out = {}
    for c in range(n_cases):
        n = rng.randint(2, 12)
        zero = rng.randint(1, n)
        before = sorted((rng.uniform(0.7, 0.95) for _ in range(zero)), reverse=True)
        out[f"r{c}"] = before + [0.0] * (n + 1 - zero)
    return out


def bernoulli(q_true, seed):
    rng = random.Random(seed)
    return lambda requests: [
        [Continuation(rng.random() < q_true[key][i], f"{key}:{i}") for _ in range(k)]
        for key, i, k in requests
    ]


def simulate(q_true, strategy, seed):
    targets = [target(key, len(q) - 1) for key, q in q_true.items()]
    rows, reasons = credit(targets, bernoulli(q_true, seed), strategy=strategy, m=8)
    assert not reasons
    pits = {r.rollout_id: r.step_index for r in rows if r.is_pit}
    visited = {}
    for r in rows:
        if 0 < r.step_index < len(q_true[r.rollout_id]) - 1:
            visited[r.rollout_id] = visited.get(r.rollout_id, 0) + 1
    used = sum(r.n_continuations for r in rows if r.step_index > 0)
    return pits, sum(visited.values()), used


def test_linear_scan_and_binary_agree_on_the_true_first_zero():
    q_true = traces(60, seed=1)
    truth = {key: next(i for i, q in enumerate(qs) if i >= 1 and q == 0) for key, qs in q_true.items()}
    linear, scan, binary = (simulate(q_true, s, seed=7) for s in ("linear", "scan", "binary"))
    assert linear[0] == scan[0] == binary[0] == truth
    assert binary[1] < scan[1] < linear[1]  # steps visited
    assert binary[2] * 2 < linear[2]  # continuations used


def test_binary_saves_at_least_3x_on_long_rollouts():
    q_true = {key: q for key, q in traces(200, seed=2).items() if len(q) - 1 >= 8}
    _, _, linear = simulate(q_true, "linear", seed=3)
    _, _, binary = simulate(q_true, "binary", seed=3)
    assert linear >= 3 * binary


def test_repit_rechooses_the_pit_from_the_rows_as_credit_would_have():
    # Q along a wrong rollout: 1.0, 0.25 (step 1: the biggest drop), 0.0 (step 2: the first zero), 0.25, 0 verdict
    steps = tuple(Step(f"s{i}", 3 * i, 3 * i + 2) for i in range(4))
    target = Target("r", "p", steps, correct=False, n_solved=4, n_sampled=4)
    seen = {i: [Continuation(j < c, "x") for j in range(4)] for i, c in ((1, 1), (2, 0), (3, 1))}
    by_rule = {rule: credit_rows(target, seen, "linear", m=4, pit=rule) for rule in ("first_zero", "max_drop")}
    pits = {rule: [r.step_index for r in rows if r.is_pit] for rule, rows in by_rule.items()}
    assert pits == {"first_zero": [2], "max_drop": [1]}
    for rule, rows in by_rule.items():
        other = "max_drop" if rule == "first_zero" else "first_zero"
        assert repit(rows, other) == by_rule[other]
        assert repit(rows, rule) == rows
    # A correct rollout keeps no pit under either rule.
    right = credit_rows(Target("c", "p", steps, True, 3, 4), seen, "linear", m=4)
    assert not any(r.is_pit for r in repit(right, "max_drop"))
    with pytest.raises(ValueError, match="needs linear credit"):
        repit([replace(r, strategy="binary") for r in right], "max_drop")
