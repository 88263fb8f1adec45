"""Every shard reads only its own inputs: a credit shard decodes the rows of its problems (S shards over N rollouts
read N, not S x N), a verdicts shard the gold answers of its rollouts' problems, and a filtered read equals the
Python filter it replaces."""

from __future__ import annotations

import pytest

from mathfactory.tasks.core.records import Rollout, Verdict, stable_id
from mathfactory.tasks.credit import CreditConfig, shard_inputs, shard_of
from mathfactory.tasks.domains import toy
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Run, write_shard
from mathfactory.tasks.verify import VERDICTS, VerifyConfig

TRAIN, TEST = toy.generate(24, "train", 3), toy.generate(6, "test", 3)
K = 4  # rollouts per problem


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    """problems (one part), rollouts and verdicts (three parts each, dealt as the sample stage deals them)."""
    run = Run(lake=str(tmp_path_factory.mktemp("lake")), run_id="reads")
    lk, problems = run.store, TRAIN + TEST
    lk.write_part(run.run_id, PROBLEMS.name, 0, PROBLEMS.record, problems)
    lk.commit(run.run_id, PROBLEMS.name, PROBLEMS.record)
    rollouts = [Rollout(stable_id(p.problem_id, k), p.problem_id, p.split, p.level, "scripted", k, p.question,
                        f"so\n#### {int(p.answer) + k % 2}", 3, "stop", 0.8, 0) for p in problems for k in range(K)]
    for s in range(3):
        part = [r for i, r in enumerate(rollouts) if (i // K) % 3 == s]
        lk.write_part(run.run_id, ROLLOUTS.name, s, Rollout, part)
        lk.write_part(run.run_id, VERDICTS.name, s, Verdict,
                      [Verdict(r.rollout_id, r.problem_id, r.split, r.level, r.sample_index % 2 == 0, "correct"
                               if r.sample_index % 2 == 0 else "wrong", "1", "1", 0) for r in part])
    lk.commit(run.run_id, ROLLOUTS.name, Rollout)
    lk.commit(run.run_id, VERDICTS.name, Verdict)
    return run.lake


@pytest.mark.parametrize("limit", [None, 10])
def test_credit_shards_read_their_own_rows_only(lake, limit):
    cfg = CreditConfig(shards=3, problems=limit)
    covered = [p.problem_id for p in TRAIN][:limit]
    seen = []
    for shard in range(3):
        run = Run(lake=lake, run_id="reads")  # its own Lake: its own counts
        problems, verdicts, rollouts = shard_inputs(cfg, run, shard)
        mine = {pid for pid in covered if shard_of(pid, 3) == shard}
        assert set(problems) == mine and {r.problem_id for r in rollouts} == mine
        assert set(verdicts) == {r.rollout_id for r in rollouts} and len(rollouts) == K * len(mine)
        # Decoded into records: exactly the shard's rows; the problems' two key columns are scanned whole.
        assert dict(run.store.rows_read) == {"problems": len(mine), "verdicts": K * len(mine),
                                             "rollouts": K * len(mine)}
        assert run.store.column_rows_read == {"problems": len(TRAIN + TEST)}
        seen += [r.rollout_id for r in rollouts]
    assert len(seen) == len(set(seen)) == K * len(covered)  # every covered rollout in exactly one shard


def test_a_verdicts_shard_reads_the_gold_of_its_own_problems(lake, tmp_path):
    src = Run(lake=lake, run_id="reads")
    run = Run(lake=str(tmp_path), run_id="reads")  # a copy of problems + rollouts to grade into
    for spec in (PROBLEMS, ROLLOUTS):
        for s, _ in enumerate(src.marker(spec.name)["parts"]):
            run.store.write_part(run.run_id, spec.name, s, spec.record, src.store.read_part("reads", spec.name, s,
                                                                                             spec.record))
        run.store.commit(run.run_id, spec.name, spec.record)
    write_shard(VERDICTS, VerifyConfig(), run, 1)
    problems_in_shard = len(TRAIN + TEST) // 3
    assert run.store.column_rows_read["problems"] == problems_in_shard  # not all 30
    assert run.store.column_rows_read["rollouts"] == K * problems_in_shard  # its ids, one column
    graded = list(run.store.read_part("reads", VERDICTS.name, 1, Verdict))
    assert len(graded) == K * problems_in_shard and {v.reason for v in graded} == {"correct", "wrong"}


def test_a_filtered_read_equals_the_python_filter_in_file_order(lake):
    run = Run(lake=lake, run_id="reads")
    wanted = {p.problem_id for p in TRAIN[::5]} | {"no-such-problem"}
    assert list(run.read(ROLLOUTS, where=("problem_id", wanted))) == [
        r for r in run.read(ROLLOUTS) if r.problem_id in wanted]
    assert list(run.read(ROLLOUTS, where=("problem_id", []))) == []
    assert list(run.read_columns(PROBLEMS, "answer", where=("problem_id", [TEST[0].problem_id]))) == [
        (TEST[0].answer,)]
