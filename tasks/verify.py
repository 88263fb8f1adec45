"""Stage `verdicts`: Rollout + the problem's gold answer -> Verdict with a reason, shard by shard."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import summary
from mathfactory.tasks.core.records import Problem, Rollout, Verdict
from mathfactory.tasks.stage import Stage

STAGE = "verdicts"


class VerifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(5.0, gt=0, description="Hard limit per LaTeX comparison; the item gets `timeout`.")
    workers: int = Field(2, ge=1, description="Worker processes for the LaTeX (math-verify) path.")
    batch: int = Field(512, ge=1, description="Rollouts graded per call to the judge.")


def judge(cfg: VerifyConfig):
    """A Judge with the run's grading settings: every stage that grades (verdicts, credit, evaluation, the
    synthesis gates) grades the same way."""
    from mathfactory.tasks.judge import Judge

    return Judge(timeout_s=cfg.timeout_s, workers=cfg.workers)


@task(name="verify-shard", cache_policy=NO_CACHE, retries=2)
def verify_shard(cfg: VerifyConfig, lake: str, run_id: str, shard: int) -> dict:
    st = Stage(lake, run_id, STAGE, Verdict, config=cfg)
    if st.done:
        return {"skipped": True}
    if st.has_shard(shard):  # a retry after this shard landed: count it, don't grade it again
        return summary.tally(st.lake.read_part(run_id, STAGE, shard, Verdict))
    gold = {p.problem_id: p.answer for p in st.lake.read(run_id, "problems", Problem)}
    rollouts = list(st.lake.read(run_id, "rollouts", Rollout, shard=shard))
    with judge(cfg) as grader:
        verdicts: list[Verdict] = []
        for i in tqdm(range(0, len(rollouts), cfg.batch), desc=f"verify shard {shard}", disable=None):
            batch = rollouts[i : i + cfg.batch]
            grades = grader.grade_many((gold[r.problem_id], r.completion) for r in batch)
            verdicts += [
                Verdict(r.rollout_id, r.problem_id, r.split, r.stage, g.correct, g.reason, g.predicted,
                        gold[r.problem_id], g.calc_errors)
                for r, g in zip(batch, grades, strict=True)
            ]
    st.write(shard, verdicts)
    return summary.tally(verdicts)


@task(name="verdicts", cache_policy=NO_CACHE)
def commit_verdicts(cfg: VerifyConfig, lake: str, run_id: str, tallies: list[dict], started: float) -> str:
    st = Stage(lake, run_id, STAGE, Verdict, config=cfg)
    if st.done:
        return st.uri
    total = summary.merge(t for t in tallies if not t.get("skipped"))
    return st.commit(started, **total, accuracy=summary.accuracy(total["groups"]))
