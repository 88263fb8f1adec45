"""Stage eval_{method}: a tiny policy trained into a lake and evaluated for real on its run's test split, through
the fan-out a pipeline uses; a scripted teacher, right on exactly the problems it knows, checks the pass@1 / maj@k
bookkeeping that a weak policy (always wrong) cannot."""

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prefect import flow
from pytest import approx
from support import TINY_PRESET
from teacher import ScriptedTeacher

from mathfactory.flows.executor import execute
from mathfactory.flows.fanout import RunnerConfig
from mathfactory.flows.report import comparison, tables
from mathfactory.flows.shard import resolve
from mathfactory.tasks import evaluate
from mathfactory.tasks.core import evaluation, formatting
from mathfactory.tasks.core.grading import extract_answer
from mathfactory.tasks.core.records import VERDICT_REASONS, EvalResult, Problem
from mathfactory.tasks.engines import TransformersOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.evaluate import SPECS, EvalConfig, eval_stage
from mathfactory.tasks.policy import POLICY, PolicyConfig, policy_dir, train_policy
from mathfactory.tasks.problems import PROBLEMS, ProblemsConfig
from mathfactory.tasks.stage import Run, build, commit, write_shard
from mathfactory.tasks.storage import Lake

TINY = yaml.safe_load(TINY_PRESET.read_text())
RUN = "tiny-eval"
SEED = 3
LEVELS = TINY["problems"]["levels"]
PER_LEVEL = 3  # test problems evaluated per education stage (the tiny preset has 8)
EVAL = EvalConfig(problems_per_level=PER_LEVEL, k=3, max_new_tokens=24, shards=2)
SFT = eval_stage("sft")


def run_in(lake: str) -> Run:
    return Run(lake=lake, run_id=RUN, seed=SEED)


def make_run(lake: str) -> None:
    """A run's problems and its trained policy (pi_sft), built as the pipeline's first two stages build them
    (the policy trained in this process, by the function the policy stage runs)."""
    build(PROBLEMS, ProblemsConfig(**TINY["problems"]), run_in(lake))
    cfg = PolicyConfig(**TINY["policy"])
    with tempfile.TemporaryDirectory() as tmp:
        train = [p for p in run_in(lake).read(PROBLEMS) if p.split == "train"]
        metrics = train_policy(cfg, train, Path(tmp))
        Lake(lake).put_dir(tmp, RUN, "policy")
    commit(POLICY, cfg, run_in(lake), [metrics], time.time())


def copy_run(src: str, dst: str, stages=("problems", "policy")) -> str:
    for stage in stages:
        shutil.copytree(Path(src) / "runs" / RUN / stage, Path(dst) / "runs" / RUN / stage)
    return dst


def evaluate_here(cfg: EvalConfig, lake: str, stage: str = SFT) -> list[EvalResult]:
    """The stage's shards one after another in this process (no Prefect run), then its commit."""
    build(SPECS[stage], cfg, run_in(lake))
    return list(Lake(lake).read(RUN, stage, EvalResult))


def chosen(lake: str) -> list[Problem]:
    """The first PER_LEVEL test problems of each stage, in lake order."""
    taken, out = Counter(), []
    for p in Lake(lake).read(RUN, "problems", Problem):
        if p.split == "test" and taken[p.level] < PER_LEVEL:
            taken[p.level] += 1
            out.append(p)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("trained") / "lake")
    make_run(lake)
    return lake


@flow
def evaluation_flow(cfg: EvalConfig, lake: str, stage: str) -> str:
    """What a pipeline does for one method: the executor fans the stage's shards out, then commits."""
    return execute(SPECS[stage], cfg, run_in(lake), RunnerConfig())


@pytest.fixture(scope="module")
def evaluated(prefect_api, trained, tmp_path_factory) -> str:
    """pi_sft evaluated under Prefect, through the fan-out (local threads), in a copy of the trained run."""
    lake = copy_run(trained, str(tmp_path_factory.mktemp("evaluated") / "lake"))
    assert evaluation_flow(EVAL, lake, SFT) == Lake(lake).uri(RUN, SFT)
    return lake


def test_one_row_per_problem_with_its_greedy_answer_and_k_samples(evaluated):
    lake = Lake(evaluated)
    rows = list(lake.read(RUN, SFT, EvalResult))
    problems = {p.problem_id: p for p in chosen(evaluated)}
    assert len(problems) == len(LEVELS) * PER_LEVEL
    assert sorted(r.problem_id for r in rows) == sorted(problems)  # each once, none other
    assert len({r.eval_id for r in rows}) == len(rows)
    for r in rows:
        p = problems[r.problem_id]
        assert (r.split, r.level, r.gold, r.method, r.model) == ("test", p.level, p.answer, "sft", f"runs/{RUN}/policy")
        assert r.greedy_reason in VERDICT_REASONS and r.greedy_correct == (r.greedy_reason == "correct")
        assert r.greedy_predicted == extract_answer(r.greedy_completion)
        assert r.k == len(r.sampled_predicted) == 3 and 0 <= r.n_sampled_correct <= 3
        assert r.majority == evaluation.majority(r.sampled_predicted)
    # The pass@1 answer is the model's greedy decode of the shared prompt format.
    engine = load_engine(TransformersOptions(), policy_dir(run_in(evaluated)))
    ordered = [problems[r.problem_id] for r in rows]
    greedy = engine.generate([formatting.prompt(p.question) for p in ordered],
                             SamplingParams(n=1, temperature=0, max_new_tokens=24, stop=formatting.STOP))
    assert [r.greedy_completion for r in rows] == [g[0].text for g in greedy]

    marker = lake.marker(RUN, SFT)
    assert marker["parts"] == ["part-00000.parquet", "part-00001.parquet"] and marker["record"] == "EvalResult"
    metrics, n = marker["metrics"], len(rows)
    assert metrics["pass@1"] == approx(sum(r.greedy_correct for r in rows) / n, abs=1e-6)
    assert metrics["maj@k"] == approx(sum(r.majority_correct for r in rows) / n, abs=1e-6)
    assert metrics["pass@1_ci"] == approx(evaluation.wilson(sum(r.greedy_correct for r in rows), n), abs=1e-6)
    assert (metrics["method"], metrics["model"], metrics["split"], metrics["n"], metrics["k"]) == (
        "sft", f"runs/{RUN}/policy", "test", n, 3)
    assert list(metrics["by_level"]) == LEVELS
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0


def test_a_finished_stage_is_skipped(evaluated):
    lake = Lake(evaluated)
    before = lake.marker(RUN, SFT)
    parts = {p: lake.fs.info(p)["mtime"] for p in lake.fs.glob(f"{lake.stage_path(RUN, SFT)}/part-*.parquet")}
    assert evaluation_flow(EVAL, evaluated, SFT) == lake.uri(RUN, SFT)
    assert build(SPECS[SFT], EVAL, run_in(evaluated)) == lake.uri(RUN, SFT)
    assert lake.marker(RUN, SFT) == before
    assert {p: lake.fs.info(p)["mtime"] for p in parts} == parts


def test_same_model_and_seed_give_the_same_rows_anywhere(evaluated, trained, tmp_path):
    """Another lake, and the problems dealt to one shard instead of two: prompts are seeded by (seed, prompt)."""
    rows = sorted(Lake(evaluated).read(RUN, SFT, EvalResult), key=lambda r: r.eval_id)
    again = evaluate_here(EVAL, copy_run(trained, str(tmp_path / "again")))
    assert sorted(again, key=lambda r: r.eval_id) == rows
    one_shard = evaluate_here(EVAL.model_copy(update={"shards": 1}), copy_run(trained, str(tmp_path / "one")))
    assert sorted(one_shard, key=lambda r: r.eval_id) == rows


def test_a_landed_shard_is_counted_not_redone(trained, tmp_path):
    lake = copy_run(trained, str(tmp_path / "lake"))
    first = write_shard(SPECS[SFT], EVAL, run_in(lake), 1)
    path = Lake(lake).part_path(RUN, SFT, 1)
    mtime = Lake(lake).fs.info(path)["mtime"]
    assert first["rows"] == PER_LEVEL * len(LEVELS) // 2 and first["tokens"] > 0
    assert write_shard(SPECS[SFT], EVAL, run_in(lake), 1) == first  # recounted from its summary, same figures
    assert Lake(lake).fs.info(path)["mtime"] == mtime


def test_eval_stages_are_sharded_and_unknown_methods_refused():
    assert resolve("mathfactory.tasks.evaluate", SFT) is SPECS[SFT]  # as a shard run finds its stage
    assert set(SPECS) == {f"eval_{m}" for m in ("sft", "rft", "af_rft", "dpo", "edit_dpo", "step_dpo", "step_dpo_prefix", "step_dpo_max_drop")}
    assert all(spec.sharded and spec.n_shards(EVAL, run_in("/lake")) == 2 for spec in SPECS.values())
    with pytest.raises(ValueError, match="unknown method 'ppo'; methods: sft, rft, af_rft, dpo, edit_dpo, step_dpo, step_dpo_prefix, step_dpo_max_drop"):
        eval_stage("ppo")
    with pytest.raises(ValueError, match="declares no stage 'eval_ppo'"):
        resolve("mathfactory.tasks.evaluate", "eval_ppo")


def test_another_methods_model_is_read_from_its_train_stage(trained, tmp_path):
    lake = copy_run(trained, str(tmp_path / "lake"))
    with pytest.raises(FileNotFoundError, match=f"run {RUN}: no model to evaluate for method 'dpo': stage "
                                                "'train_dpo' has not finished"):
        write_shard(SPECS[eval_stage("dpo")], EVAL, run_in(lake), 0)
    # pi_sft's weights stand in for a DPO model, committed as a training stage commits its model.
    lk = Lake(lake)
    lk.put_dir(policy_dir(run_in(lake)), RUN, "train_dpo")
    lk.commit(RUN, "train_dpo", None, metrics={"train_rows": 5})
    dpo = evaluate_here(EVAL, lake, eval_stage("dpo"))
    sft = evaluate_here(EVAL, lake)
    assert {r.model for r in dpo} == {f"runs/{RUN}/train_dpo"} and {r.method for r in dpo} == {"dpo"}
    by_problem = {r.problem_id: r for r in sft}
    # Same weights and seed: the same completions, under ids that name the other model.
    assert all(r.greedy_completion == by_problem[r.problem_id].greedy_completion for r in dpo)
    assert all(r.sampled_predicted == by_problem[r.problem_id].sampled_predicted for r in dpo)
    assert not {r.eval_id for r in dpo} & {r.eval_id for r in sft}

    title, headers, rows = comparison(lk, RUN)
    assert headers[:3] == ["method", "trained on", "problems"] and headers[4] == "maj@3"
    n = str(len(LEVELS) * PER_LEVEL)
    assert [row[:3] for row in rows] == [["sft", str(TINY["problems"]["n_train"]), n], ["dpo", "5", n]]
    assert "test split" in title and tables(lk, RUN)[-1] == (title, headers, rows)


def test_pass_at_1_and_maj_at_k_count_what_the_judge_said(trained, tmp_path, monkeypatch):
    """A teacher that knows half of the problems answers those right when greedy and slips when sampling (a wrong
    sample's answer is always gold + 1), and does not know the others: every count is known in advance."""
    lake = copy_run(trained, str(tmp_path / "lake"))
    problems = chosen(lake)
    known = {p.problem_id for p in problems[::2]}
    teacher = ScriptedTeacher({p.question: p.solution for p in problems if p.problem_id in known}, error_rate=0.3)
    monkeypatch.setattr(evaluate, "load_engine", lambda *args: teacher)
    cfg = EVAL.model_copy(update={"k": 4, "max_new_tokens": 400})
    rows = evaluate_here(cfg, lake)
    gold = {p.problem_id: p.answer for p in problems}
    for r in rows:
        assert r.greedy_correct == (r.problem_id in known)
        assert r.greedy_reason == ("correct" if r.problem_id in known else "no_answer")
        right = [a == gold[r.problem_id] for a in r.sampled_predicted]
        assert r.n_sampled_correct == sum(right)
        # two answers at most, gold and gold + 1: the majority is right with more right votes, or on a tie when
        # the first sample was right
        assert r.majority_correct == (2 * sum(right) > 4 or (2 * sum(right) == 4 and right[0]))
    assert 0 < sum(r.n_sampled_correct for r in rows) < 4 * len(known)  # the teacher did slip, not always
    metrics = Lake(lake).marker(RUN, SFT)["metrics"]
    assert metrics["pass@1"] == approx(len(known) / len(problems), abs=1e-6)
    assert metrics["maj@k"] == approx(sum(r.majority_correct for r in rows) / len(rows), abs=1e-6)
    assert metrics["sampled_accuracy"] == approx(sum(r.n_sampled_correct for r in rows) / (4 * len(rows)), abs=1e-6)
    assert metrics["by_level"] == {
        s: {"n": PER_LEVEL, "pass@1": approx(sum(p.problem_id in known for p in problems if p.level == s) / PER_LEVEL,
                                             abs=1e-6),
            "maj@k": approx(sum(r.majority_correct for r in rows if r.level == s) / PER_LEVEL, abs=1e-6)}
        for s in LEVELS}
