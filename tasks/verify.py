"""Stage `verdicts`: Rollout + the problem's gold answer -> Verdict with a reason, shard by shard. The same grading
for any user file of model outputs (`mathfactory verify`) is tasks/verify_file.py, which imports no prefect."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from pydantic import Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import summary
from mathfactory.tasks.core.records import Verdict
from mathfactory.tasks.judge import Grading
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Meter, Run, StageSpec
from mathfactory.tasks.verify_file import grade_file as grade_file  # where callers found it before


class VerifyConfig(Grading):
    """How answers are graded, for the verdicts and every other stage that grades (a run's `grading`)."""

    batch: int = Field(512, ge=1, description="Rollouts graded per call to the judge.")


def verdicts(cfg: VerifyConfig, run: Run, shard: int, meter: Meter) -> Iterator[Verdict]:
    """Shard `shard` of the rollouts, graded against their problems' gold answers."""
    # Streamed batch by batch (a shard may hold millions of rollouts), with only the gold answers of its problems.
    ids = {pid for (pid,) in run.read_columns(ROLLOUTS, "problem_id", shard=shard)}
    gold = dict(run.read_columns(PROBLEMS, "problem_id", "answer", where=("problem_id", ids)))
    rollouts = run.read(ROLLOUTS, shard=shard)
    with run.grading.judge() as judge, tqdm(desc=f"verify shard {shard}", unit="rollout", disable=None) as bar:
        while batch := list(itertools.islice(rollouts, cfg.batch)):
            grades = judge.grade_many((gold[r.problem_id], r.completion) for r in batch)
            bar.update(len(batch))
            yield from (Verdict(r.rollout_id, r.problem_id, r.split, r.level, g.correct, g.reason, g.predicted,
                                gold[r.problem_id], g.calc_errors) for r, g in zip(batch, grades, strict=True))


def _summarize(cfg: VerifyConfig, run: Run, shards: list[dict]) -> dict:
    total = summary.merge(shards)
    return {**total, "accuracy": summary.accuracy(total["groups"])}


# A verdicts shard grades a rollouts shard: the two stages are sharded alike. Grading needs no GPU: its shards
# never take a gpu slot.
VERDICTS = StageSpec("verdicts", Verdict, VerifyConfig, verdicts, reads=(PROBLEMS.name, ROLLOUTS.name),
                     shards=lambda cfg, run: len(run.marker(ROLLOUTS.name)["parts"]), tally=summary.tally,
                     summarize=_summarize, retries=2, needs="cpu")
SPECS = {VERDICTS.name: VERDICTS}

