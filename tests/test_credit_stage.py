"""Stages credit and pairs end to end: toy problems, hand-written rollouts whose slip is in a known step, the real
verify stage, and a ScriptedTeacher (true Q of every prefix known) served over HTTP -> StepCredit rows and every
training set. The exact teacher makes Monte-Carlo Q exact, so the first pit must be the slipped step, always."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
from engines.openai_app import Faults, Record, Server, make_app
from teacher import ScriptedTeacher, wrong_completion

from mathfactory.tasks.core import format
from mathfactory.tasks.core.records import Problem, Rollout, StepCredit, Verdict, stable_id
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.core.strategies import STRATEGIES
from mathfactory.tasks.credit import CreditConfig, commit_credit, credit_shard
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines import OpenAIOptions
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.judge import Judge
from mathfactory.tasks.pairs import DATASETS, PairsConfig, build_all, make_pairs
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.verify import VerifyConfig, commit_verdicts, verify_shard

MODEL = "teacher"
SEED = 0
M = 4  # continuations per prefix: the exact teacher needs few, since its Q is 0 or 1
SHARDS = 2
NOISE = 0.1  # the noisy teacher's slip rate per continued step line


# --- what the test writes ------------------------------------------------------------------------------------


@dataclass
class World:
    """The problems and hand-written rollouts every run starts from, with what is known about them."""

    problems: list[Problem]
    rollouts: list[Rollout]
    slip: dict[str, int] = field(default_factory=dict)  # wrong rollout -> the step with the slip (1-based)
    correct: set[str] = field(default_factory=set)  # rollouts that are the reference solution
    empty: str = ""  # the rollout with an empty completion
    unsolved: str = ""  # the train problem none of whose rollouts is right: its wrong rollouts are credited too
    test_problem: str = ""

    @property
    def train(self) -> dict[str, Problem]:
        return {p.problem_id: p for p in self.problems if p.split == "train"}

    def of(self, problem_id: str) -> list[Rollout]:
        return [r for r in self.rollouts if r.problem_id == problem_id]

    def solve_rate(self, problem_id: str) -> float:
        rollouts = self.of(problem_id)
        return sum(r.rollout_id in self.correct for r in rollouts) / len(rollouts)

    def creditable_wrong(self) -> list[Rollout]:
        """Wrong train rollouts credit can label: every one with steps, a never-solved question's included."""
        return [r for r in self.rollouts if r.rollout_id in self.slip and r.problem_id in self.train]

    def correct_train(self) -> list[Rollout]:
        return [r for r in self.rollouts if r.rollout_id in self.correct and r.problem_id in self.train]


def slipped_steps(n: int) -> list[int]:
    """Where the wrong rollouts of an n-step problem slip: first, second, middle and last step."""
    return sorted({1, min(2, n), n // 2 + 1, n})


def build_world() -> World:
    # Six train problems, one per toy stage and a second grade_school one (college and competition have 8+
    # steps), plus one test problem whose rollouts no training set may use.
    train = toy.generate(6, "train", SEED)
    [test] = toy.generate(1, "test", SEED)
    world = World(
        problems=[*train, test], rollouts=[], unsolved=train[-1].problem_id, test_problem=test.problem_id
    )

    def add(p: Problem, completion: str) -> Rollout:
        k = len(world.of(p.problem_id))
        r = Rollout(
            stable_id(p.problem_id, "scripted", k),
            p.problem_id,
            p.split,
            p.stage,
            "scripted",
            k,
            format.prompt(p.question),
            completion,
            len(completion.split()),
            "stop",
            0.8,
            SEED,
        )
        world.rollouts.append(r)
        return r

    for i, p in enumerate([*train, test]):
        n = len(split_steps(format.completion(p.solution)))
        n_correct = 0 if p.problem_id == world.unsolved else 1 if p is test else 1 + i % 3  # Q_0 varies
        for _ in range(n_correct):
            world.correct.add(add(p, format.completion(p.solution)).rollout_id)
        for j in slipped_steps(n) if p is not test else [1]:
            world.slip[add(p, wrong_completion(p.solution, j)).rollout_id] = j
        if i == 1:
            world.empty = add(p, "").rollout_id
    return world


def seed_run(lake: str, run_id: str, world: World) -> None:
    """Stages problems and rollouts written by hand, then verdicts by the real verify stage."""
    lk = Lake(lake)
    lk.write_part(run_id, "problems", 0, Problem, world.problems)
    lk.commit(run_id, "problems", Problem)
    for shard in range(SHARDS):
        lk.write_part(run_id, "rollouts", shard, Rollout, world.rollouts[shard::SHARDS])
    lk.commit(run_id, "rollouts", Rollout)
    cfg, started = VerifyConfig(), time.time()
    tallies = [verify_shard.fn(cfg, lake, run_id, shard) for shard in range(SHARDS)]
    commit_verdicts.fn(cfg, lake, run_id, tallies, started)


# --- the served teachers and the runs --------------------------------------------------------------------------


@dataclass
class Served:
    server: Server
    record: Record
    teacher: ScriptedTeacher


@dataclass
class Run:
    lake: Lake
    run_id: str
    cfg: CreditConfig
    shards: list[dict]
    credits: dict[str, dict[int, StepCredit]]  # rollout_id -> step_index -> row
    datasets: dict[str, list]
    bodies: list[dict]  # the requests the server answered during this run
    completion_tokens: int  # what the server reported generating during this run

    def marker(self, stage: str) -> dict:
        marker = self.lake.marker(self.run_id, stage)
        assert marker is not None, f"{stage} has no marker"
        return marker


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture(scope="module")
def served(world) -> dict[str, Served]:
    """An exact teacher and a noisy one, each behind its own OpenAI-compatible server on loopback."""
    solutions = {p.question: p.solution for p in world.problems}
    with ExitStack() as stack:
        teachers = {}
        for name, error_rate in (("exact", 0.0), ("noisy", NOISE)):
            record, teacher = Record(), ScriptedTeacher(solutions, error_rate)
            server = Server(make_app(teacher, MODEL, Faults(), record, max_model_len=4096)).start()
            stack.callback(server.stop)
            teachers[name] = Served(server, record, teacher)
        yield teachers


def credit_config(served: Served, **kw) -> CreditConfig:
    engine = OpenAIOptions(base_url=served.server.url, model=MODEL, timeout_s=30, max_retries=1)
    return CreditConfig(engine=engine, **{"shards": SHARDS, "m": M, "max_new_tokens": 200, **kw})


@pytest.fixture(scope="module")
def runs(world, served, tmp_path_factory) -> Callable[..., Run]:
    """runs(strategy, positives=True, teacher="exact", m=M, problems=None) -> the finished run, each done once per
    module."""
    lake = str(tmp_path_factory.mktemp("lake"))
    done: dict[tuple, Run] = {}

    def get(strategy: str, positives: bool = True, teacher: str = "exact", m: int = M,
            problems: int | None = None) -> Run:
        key = (strategy, positives, teacher, m, problems)
        if key not in done:
            run_id = "-".join(map(str, key))
            seed_run(lake, run_id, world)
            s = served[teacher]
            cfg = credit_config(s, strategy=strategy, positives=positives, m=m, problems=problems)
            seen, tokens, started = len(s.record.bodies), s.record.completion_tokens, time.time()
            shards = [credit_shard.fn(cfg, lake, run_id, shard, SEED) for shard in range(SHARDS)]
            commit_credit.fn(cfg, lake, run_id, shards, started)
            make_pairs.fn(PairsConfig(), cfg.style, lake, run_id, SEED)
            lk = Lake(lake)
            credits: dict[str, dict[int, StepCredit]] = {}
            for row in lk.read(run_id, "credit", StepCredit):
                assert row.step_index not in credits.setdefault(row.rollout_id, {}), "a step labelled twice"
                credits[row.rollout_id][row.step_index] = row
            datasets = {name: list(lk.read(run_id, name, record)) for name, record in DATASETS.items()}
            bodies, tokens = s.record.bodies[seen:], s.record.completion_tokens - tokens
            done[key] = Run(lk, run_id, cfg, shards, credits, datasets, bodies, tokens)
        return done[key]

    return get


def prefix(r: Rollout, row: StepCredit) -> str:
    return r.prompt + r.completion[: row.end]


# --- the teacher itself ----------------------------------------------------------------------------------------


def test_teacher_q_is_one_exactly_on_reference_prefixes(world):
    p = next(p for p in world.problems if p.stage == "competition")
    teacher = ScriptedTeacher({p.question: p.solution})
    reference = format.completion(p.solution)
    lines = reference.splitlines(keepends=True)
    n = len(lines) - 1  # the `####` line belongs to the last step
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=200, stop=format.STOP, seed=5)
    slipped = wrong_completion(p.solution, 4).splitlines(keepends=True)
    prompts = [format.prompt(p.question) + "".join(src[:i]) for src in (lines, slipped) for i in range(n)]
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
        teacher.generate([format.prompt("What is 1+1?")], params)[0][0].text
        == "I do not know this question.\n"
    )


def test_noisy_teacher_samples_its_true_q(world):
    p = next(p for p in world.problems if p.stage == "college")
    teacher = ScriptedTeacher({p.question: p.solution}, error_rate=0.2)
    lines = format.completion(p.solution).splitlines(keepends=True)
    prompt = format.prompt(p.question) + "".join(lines[:5])
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
    train = tuple(format.prompt(p.question) for p in world.train.values())
    assert all(body["prompt"].startswith(train) for body in run.bodies)
    assert any(body["prompt"].startswith(format.prompt(world.train[world.unsolved].question)) for body in run.bodies)
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


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_and_test_rollouts_are_not_credited_unsolved_ones_are(runs, world, strategy):
    run = runs(strategy)
    assert run.marker("credit")["metrics"]["not_credited"] == {"no_steps": 1}
    assert sum((Counter(s["not_credited"]) for s in run.shards), Counter()) == Counter(no_steps=1)
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


# --- the pairs stage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_dataset_lands_with_its_marker(runs, world, strategy):
    run = runs(strategy)
    for name in DATASETS:
        assert run.marker(name)["rows"] == len(run.datasets[name]), name
    sft = run.datasets["sft"]
    assert sorted(e.problem_id for e in sft) == sorted(world.train)
    assert all(e.completion == format.completion(world.train[e.problem_id].solution) for e in sft)
    assert run.marker("sft")["metrics"]["skipped"] == {"not_train": 1}
    wrong_ids = {r.rollout_id for r in world.rollouts if r.rollout_id in world.slip}
    solved = [pid for pid in world.train if pid != world.unsolved]
    outcome = run.datasets["dpo_outcome"]
    n_wrong = {pid: sum(r.rollout_id in wrong_ids for r in world.of(pid)) for pid in world.train}
    # The default chosen side is the reference (D_syn): one per problem, the never-solved one's included.
    assert len(outcome) == sum(min(PairsConfig().outcome_n, n) for n in n_wrong.values())
    for pairs in (outcome, run.datasets["dpo_edit"]):
        assert all(x.chosen == format.completion(world.train[x.problem_id].solution) and x.chosen_rollout_id is None
                   and x.chosen_source == "reference" and x.rejected_rollout_id in wrong_ids for x in pairs)
    assert len(run.datasets["dpo_edit"]) == len(world.train)
    assert run.marker("dpo_outcome")["metrics"]["chosen_sources"] == {"reference": len(outcome)}
    rft = run.datasets["rft"]
    assert sorted(e.problem_id for e in rft) == sorted(solved)  # equal solutions dedup to one per problem


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_step_pairs_are_cut_at_the_slip(runs, world, strategy):
    run = runs(strategy)
    wrong = {r.rollout_id: r for r in world.creditable_wrong()}
    cut = {x.rejected_rollout_id: x for x in run.datasets["dpo_step_cut"]}
    prefix_pairs = {x.rejected_rollout_id: x for x in run.datasets["dpo_step_prefix"]}
    assert set(cut) == set(prefix_pairs) == set(wrong)
    for rid, r in wrong.items():
        j = world.slip[rid]
        lines = r.completion.splitlines(keepends=True)  # n step lines, then `#### N` (part of step n)
        reference = format.completion(world.train[r.problem_id].solution)
        x = cut[rid]
        assert (x.kind, x.pit_index, x.prompt) == ("step_cut", j, r.prompt)
        assert x.rejected == "".join(lines[:j] if j < len(lines) - 1 else lines)
        assert (x.chosen, x.chosen_rollout_id, x.chosen_source) == (reference, None, "reference")
        y = prefix_pairs[rid]
        before = "".join(lines[: j - 1])
        assert (y.kind, y.pit_index, y.prompt) == ("step_prefix", j, r.prompt + before)
        assert y.chosen == reference[len(before) :]  # the teacher's (= the reference's) remainder
        assert y.rejected == x.rejected[len(before) :]
        # From the empty prefix the reference stands in; after it, a continuation credit sampled.
        assert (y.chosen_rollout_id, y.chosen_source) == (None, "reference" if j == 1 else "continuation")
    skipped = {"no_answer": 1}
    final = sum(x.rejected == next(r.completion for r in world.rollouts if r.rollout_id == x.rejected_rollout_id)
                for x in cut.values())
    for name in ("dpo_step_cut", "dpo_step_prefix"):
        metrics = run.marker(name)["metrics"]
        assert (metrics["skipped"], metrics["pit_final"]) == (skipped, final)
        assert metrics["problems"] == len(world.train)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stepwise_labels_are_true_before_the_pit(runs, world, strategy):
    run = runs(strategy)
    rows = {x.rollout_id: x for x in run.datasets["stepwise"]}
    assert set(rows) == set(run.credits)
    for r in world.creditable_wrong() + world.correct_train():
        x, n = rows[r.rollout_id], len(split_steps(r.completion))
        slip = world.slip.get(r.rollout_id, n + 1)
        assert x.labels == [i < slip for i in range(1, n + 1)]
        assert x.completions[-1].endswith(r.completion.splitlines()[-1]) and len(x.completions) == n
        assert x.prompt == r.prompt


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rft_advantage_keeps_the_positives_credit_judged(runs, strategy):
    run = runs(strategy)
    rft, kept = run.datasets["rft"], run.datasets["rft_advantage"]
    # Every positive is the reference: its advantages are 1 - Q_0 > 0 then 0, all tied at the median of 0.
    assert kept and sorted(e.rollout_id for e in kept) == sorted(e.rollout_id for e in rft)
    assert {e.kind for e in kept} == {"rft_advantage"}


def test_without_positives_only_wrong_rollouts_are_credited(runs, world):
    run = runs("binary", positives=False)
    assert set(run.credits) == {r.rollout_id for r in world.creditable_wrong()}
    assert run.datasets["rft"] and not run.datasets["rft_advantage"]
    assert run.marker("rft_advantage")["metrics"]["skipped"] == {"no_credit": len(run.datasets["rft"])}
    assert len(run.datasets["dpo_step_cut"]) == len(world.creditable_wrong())
    assert sum(s["continuations"] for s in run.shards) < sum(
        s["continuations"] for s in runs("binary").shards
    )


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
    lake = run.lake.url
    again = [credit_shard.fn(run.cfg, lake, run.run_id, shard, SEED) for shard in range(SHARDS)]
    assert again == [{"shard": shard, "skipped": True} for shard in range(SHARDS)]
    assert commit_credit.fn(run.cfg, lake, run.run_id, again, time.time()) == run.lake.uri(
        run.run_id, "credit"
    )
    uris = make_pairs.fn(PairsConfig(), run.cfg.style, lake, run.run_id, SEED)
    assert uris == {name: run.lake.uri(run.run_id, name) for name in DATASETS}
    assert record.received == requests
    assert {name: run.marker(name) for name in stages} == markers
    assert {p: run.lake.fs.info(p)["mtime"] for p in parts} == parts


@pytest.fixture(scope="module")
def resumed(world, served, tmp_path_factory) -> tuple[Run, list[dict], int]:
    """A scan run whose shards all landed, then ran again before the commit (a flow resumed after a crash):
    (the run committed from the second summaries, the first summaries, requests the second pass made)."""
    lake, run_id, s = str(tmp_path_factory.mktemp("resumed")), "resumed", served["exact"]
    seed_run(lake, run_id, world)
    cfg, started = credit_config(s, strategy="scan"), time.time()
    first = [credit_shard.fn(cfg, lake, run_id, shard, SEED) for shard in range(SHARDS)]
    requests = s.record.received
    again = [credit_shard.fn(cfg, lake, run_id, shard, SEED) for shard in range(SHARDS)]
    requests = s.record.received - requests
    commit_credit.fn(cfg, lake, run_id, again, started)
    return Run(Lake(lake), run_id, cfg, again, {}, {}, [], 0), first, requests


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
    assert sum((Counter(s["not_credited"]) for s in first), Counter()) == Counter(expected)
    assert run.marker("credit")["metrics"]["not_credited"] == expected


# --- the chosen side and coverage --------------------------------------------------------------------------------


def test_policy_chosen_sides_are_the_problems_own_correct_rollouts(runs, world):
    """chosen=policy, as before the reference became the default: the never-solved problem yields no pair."""
    run = runs("binary")
    lk, rid = run.lake, run.run_id
    credits = [row for rows in run.credits.values() for row in rows.values()]
    built = build_all(PairsConfig(chosen="policy"), "auto", list(lk.read(rid, "problems", Problem)),
                      list(lk.read(rid, "rollouts", Rollout)), list(lk.read(rid, "verdicts", Verdict)), credits, SEED)
    unsolved = {r.rollout_id for r in world.of(world.unsolved)}
    for name in ("dpo_outcome", "dpo_edit", "dpo_step_cut"):
        rows = built[name].rows
        assert rows and all(x.chosen_rollout_id in world.correct and x.chosen_source == "rollout" for x in rows)
        assert not {x.rejected_rollout_id for x in rows} & unsolved
        assert built[name].skipped["no_chosen"] == len(unsolved)
    both = build_all(PairsConfig(chosen="both"), "auto", list(lk.read(rid, "problems", Problem)),
                     list(lk.read(rid, "rollouts", Rollout)), list(lk.read(rid, "verdicts", Verdict)), credits, SEED)
    assert len(both["dpo_edit"].rows) == len(built["dpo_edit"].rows) + len(world.train)


def test_every_set_from_the_policys_samples_covers_the_problems_credit_covered(runs, world):
    run = runs("binary", problems=3)
    first = [p.problem_id for p in world.problems if p.split == "train"][:3]
    assert {row.problem_id for rows in run.credits.values() for row in rows.values()} == set(first)
    for name in DATASETS:
        ids = {x.problem_id for x in run.datasets[name]}
        metrics = run.marker(name)["metrics"]
        assert metrics["problems"] == len(ids) and metrics["covered"] == 3
        if name == "sft":  # D_syn whole: what pi_sft learned from
            assert ids == set(world.train)
        else:
            assert ids and ids <= set(first), name
    assert {x.problem_id for x in run.datasets["dpo_step_cut"]} == set(first)
