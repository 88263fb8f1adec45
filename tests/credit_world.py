"""The world the credit and pairs stage tests share: toy problems, hand-written rollouts whose slip is in a known
step, the real verify stage, and ScriptedTeachers (true Q of every prefix known) served over HTTP; `runs` builds
credit and every training set once per (strategy, ...) and module. Import the fixtures into a test module."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
from engines.openai_app import Faults, Record, Server, make_app
from teacher import ScriptedTeacher, wrong_completion

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Problem, Rollout, StepCredit, stable_id
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.credit import CREDIT, CreditConfig
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines import OpenAIOptions
from mathfactory.tasks.pairs import DATASETS, SETS, PairsConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.verify import VERDICTS, VerifyConfig

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
            p.level,
            "scripted",
            k,
            formatting.prompt(p.question),
            completion,
            len(completion.split()),
            "stop",
            0.8,
            SEED,
        )
        world.rollouts.append(r)
        return r

    for i, p in enumerate([*train, test]):
        n = len(split_steps(formatting.completion(p.solution)))
        n_correct = 0 if p.problem_id == world.unsolved else 1 if p is test else 1 + i % 3  # Q_0 varies
        for _ in range(n_correct):
            world.correct.add(add(p, formatting.completion(p.solution)).rollout_id)
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
    build(VERDICTS, VerifyConfig(), Run(lake=lake, run_id=run_id))


# --- the served teachers and the runs --------------------------------------------------------------------------


@dataclass
class Served:
    server: Server
    record: Record
    teacher: ScriptedTeacher


@dataclass
class Finished:
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
def runs(world, served, tmp_path_factory) -> Callable[..., Finished]:
    """runs(strategy, positives=True, teacher="exact", m=M, problems=None, unsolved=True) -> the finished run, each
    done once per module."""
    lake = str(tmp_path_factory.mktemp("lake"))
    done: dict[tuple, Finished] = {}

    def get(strategy: str, positives: bool = True, teacher: str = "exact", m: int = M,
            problems: int | None = None, unsolved: bool = True) -> Finished:
        key = (strategy, positives, teacher, m, problems, unsolved)
        if key not in done:
            run_id = "-".join(map(str, key))
            seed_run(lake, run_id, world)
            s = served[teacher]
            cfg = credit_config(s, strategy=strategy, positives=positives, m=m, problems=problems, unsolved=unsolved)
            seen, tokens = len(s.record.bodies), s.record.completion_tokens
            run = Run(lake=lake, run_id=run_id, seed=SEED)
            build(CREDIT, cfg, run)
            for spec in SETS.values():
                build(spec, PairsConfig(), run)
            lk = Lake(lake)
            shards = [lk.shard_summary(run_id, CREDIT.name, shard) for shard in range(SHARDS)]
            credits: dict[str, dict[int, StepCredit]] = {}
            for row in lk.read(run_id, "credit", StepCredit):
                assert row.step_index not in credits.setdefault(row.rollout_id, {}), "a step labelled twice"
                credits[row.rollout_id][row.step_index] = row
            datasets = {name: list(lk.read(run_id, name, record)) for name, record in DATASETS.items()}
            bodies, tokens = s.record.bodies[seen:], s.record.completion_tokens - tokens
            done[key] = Finished(lk, run_id, cfg, shards, credits, datasets, bodies, tokens)
        return done[key]

    return get


def prefix(r: Rollout, row: StepCredit) -> str:
    return r.prompt + r.completion[: row.end]
