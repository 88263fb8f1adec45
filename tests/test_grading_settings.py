"""One verifier config for every stage that grades: a LaTeX answer (math-verify's path), a scripted teacher that
always reaches it, and a timeout too short for math-verify must turn correct into `timeout` in credit and in
evaluation, as in verdicts. The shards run as a shard deployment runs them: the run, grading included, is JSON."""

from __future__ import annotations

import pytest
from engines.openai_app import Faults, Record, Server, make_app
from teacher import ScriptedTeacher

from mathfactory.flows.shard import ref, resolve
from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import EvalResult, Problem, Rollout, StepCredit, stable_id
from mathfactory.tasks.credit import CREDIT, CreditConfig
from mathfactory.tasks.engines import OpenAIOptions
from mathfactory.tasks.evaluate import SPECS as EVALUATIONS
from mathfactory.tasks.evaluate import EvalConfig, eval_stage
from mathfactory.tasks.stage import Run, build, write_shard
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.verify import VERDICTS, VerifyConfig

MODEL, RUN = "teacher", "latex"
QUESTION = "Expand (x+1)^6."
EXPANDED = "x^{6}+6x^{5}+15x^{4}+20x^{3}+15x^{2}+6x+1"
SOLUTION = f"Use the binomial coefficients 1, 6, 15, 20, 15, 6, 1.\nSo (x+1)^6 expands term by term.\n#### {EXPANDED}"
GOLD = "(x+1)^{6}"  # equal to EXPANDED only after SymPy expands it: ~6 ms even with warm caches
TOO_SHORT = VerifyConfig(timeout_s=1e-4)


def problem(split: str) -> Problem:
    return Problem(stable_id("latex", split), "toy", split, "grade_school", QUESTION, SOLUTION, GOLD)


@pytest.fixture(scope="module")
def teacher_url():
    server = Server(make_app(ScriptedTeacher({QUESTION: SOLUTION}), MODEL, Faults(), Record())).start()
    yield server.url
    server.stop()


def engine(url: str) -> OpenAIOptions:
    return OpenAIOptions(base_url=url, model=MODEL, timeout_s=30, max_retries=1)


def seeded_run(lake: str, grading: VerifyConfig) -> Run:
    """Problems and one correct rollout (the reference), graded by the verify stage with its default settings;
    the run then grades with `grading`."""
    lk, p = Lake(lake), problem("train")
    lk.write_part(RUN, "problems", 0, Problem, [p, problem("test")])
    lk.commit(RUN, "problems", Problem)
    rollout = Rollout("r", p.problem_id, "train", p.level, "scripted", 0, formatting.prompt(QUESTION),
                      formatting.completion(SOLUTION), 10, "stop", 0.8, 0)
    lk.write_part(RUN, "rollouts", 0, Rollout, [rollout])
    lk.commit(RUN, "rollouts", Rollout)
    build(VERDICTS, VerifyConfig(), Run(lake=lake, run_id=RUN))
    return Run(lake=lake, run_id=RUN, grading=grading)


def as_a_shard_run(spec, cfg, run: Run) -> None:
    """Shard 0 as a shard deployment's run gets it: the stage found by name, config and run from JSON."""
    found = resolve(ref(spec), spec.name)
    write_shard(found, found.config_type.model_validate(cfg.model_dump(mode="json")),
                Run.model_validate(run.model_dump(mode="json")), 0)


@pytest.mark.parametrize("grading, q", [(VerifyConfig(), 1.0), (TOO_SHORT, 0.0)])
def test_credit_grades_continuations_with_the_runs_verify_settings(tmp_path, teacher_url, grading, q):
    run = seeded_run(str(tmp_path), grading)
    cfg = CreditConfig(engine=engine(teacher_url), strategy="linear", m=4, shards=1, max_new_tokens=50)
    as_a_shard_run(CREDIT, cfg, run)
    [step1] = [r for r in Lake(str(tmp_path)).read_part(RUN, "credit", 0, StepCredit) if r.step_index == 1]
    # Every continuation is the reference's remainder, ending in the expanded polynomial: right, unless grading
    # timed out.
    assert (step1.n_continuations, step1.q) == (4, q)


@pytest.mark.parametrize("grading, reason", [(VerifyConfig(), "correct"), (TOO_SHORT, "timeout")])
def test_evaluation_grades_with_the_runs_verify_settings(tmp_path, teacher_url, grading, reason):
    run, spec = seeded_run(str(tmp_path), grading), EVALUATIONS[eval_stage("sft")]
    cfg = EvalConfig(engine=engine(teacher_url), k=2, shards=1, max_new_tokens=50)
    as_a_shard_run(spec, cfg, run)
    [row] = Lake(str(tmp_path)).read_part(RUN, spec.name, 0, EvalResult)
    assert (row.greedy_reason, row.greedy_predicted) == (reason, EXPANDED)
    assert row.n_sampled_correct == (2 if reason == "correct" else 0)
