"""Stage `verdicts`: hand-written rollouts of toy problems graded against their gold answers, shard by shard as
the rollouts were sharded, with the marker's tallies; and the same grading for a user's file (`grade_file`)."""

from __future__ import annotations

import json

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Rollout, stable_id
from mathfactory.tasks.domains import toy
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Run, build, write_shard
from mathfactory.tasks.verify import VERDICTS, VerifyConfig
from mathfactory.tasks.verify_file import grade_file

PROBLEMS_ = toy.generate(4, "train", 1) + toy.generate(2, "test", 1)
COMPLETIONS = {  # what each rollout says, and the reason it must get
    "right": (lambda p: formatting.completion(p.solution), "correct"),
    "off by one": (lambda p: f"It is {p.answer}.\n#### {int(p.answer) + 1}\n", "wrong"),
    "no answer": (lambda p: "I am not sure.\n", "no_answer"),
    "latex right": (lambda p: f"So\n#### \\frac{{{2 * int(p.answer)}}}{{2}}\n", "correct"),
}


def rollouts() -> list[Rollout]:
    return [Rollout(stable_id(p.problem_id, kind), p.problem_id, p.split, p.level, "scripted", k,
                    formatting.prompt(p.question), make(p), 9, "stop", 0.8, 0)
            for p in PROBLEMS_ for k, (kind, (make, _)) in enumerate(COMPLETIONS.items())]


def seeded(tmp_path, shards: int) -> Run:
    run = Run(lake=str(tmp_path), run_id="verify")
    run.store.write_part(run.run_id, PROBLEMS.name, 0, PROBLEMS.record, PROBLEMS_)
    run.store.commit(run.run_id, PROBLEMS.name, PROBLEMS.record)
    rows, ids = rollouts(), [p.problem_id for p in PROBLEMS_]
    for s in range(shards):  # as the sample stage deals them: every rollout of a problem in one shard
        run.store.write_part(run.run_id, ROLLOUTS.name, s, Rollout,
                             [r for r in rows if ids.index(r.problem_id) % shards == s])
    run.store.commit(run.run_id, ROLLOUTS.name, Rollout)
    return run


def test_each_rollout_gets_its_reason_and_the_marker_tallies_them(tmp_path):
    run = seeded(tmp_path, shards=3)
    build(VERDICTS, VerifyConfig(), run)
    expected = {stable_id(p.problem_id, kind): reason for p in PROBLEMS_ for kind, (_, reason) in COMPLETIONS.items()}
    verdicts = list(run.read(VERDICTS))
    assert {v.rollout_id: v.reason for v in verdicts} == expected
    gold = {p.problem_id: p.answer for p in PROBLEMS_}
    assert all(v.gold == gold[v.problem_id] and v.correct == (v.reason == "correct") for v in verdicts)
    marker = run.marker(VERDICTS.name)
    assert marker["parts"] == [f"part-0000{s}.parquet" for s in range(3)]  # sharded as the rollouts were
    metrics = marker["metrics"]
    assert metrics["reasons"] == {"correct": 12, "wrong": 6, "no_answer": 6, "unparseable": 0, "timeout": 0}
    assert metrics["problems"] == 6 and metrics["accuracy"]["train/grade_school"] == 0.5


def test_a_landed_shard_is_recounted_with_the_same_tally(tmp_path):
    run = seeded(tmp_path, shards=2)
    first = write_shard(VERDICTS, VerifyConfig(), run, 1)
    assert write_shard(VERDICTS, VerifyConfig(), run, 1) == first
    (tmp_path / "runs" / "verify" / "verdicts" / "_shards" / "part-00001.json").unlink()  # an older lake's shard
    again = write_shard(VERDICTS, VerifyConfig(), run, 1)
    assert {k: again[k] for k in ("reasons", "groups", "problems", "mixed")} == {
        k: first[k] for k in ("reasons", "groups", "problems", "mixed")}


def test_a_users_file_is_graded_row_by_row_and_bad_rows_say_why(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join([json.dumps({"gold": "6", "out": "so\n#### 6"}), "{not json",
                               json.dumps({"gold": "1/2", "out": "#### 0.5"}), json.dumps({"gold": "3"})]) + "\n")
    graded = list(grade_file(str(path), "gold", "out", VerifyConfig()))
    assert [(row["reason"], why) for _, row, why in graded] == [
        ("correct", None), ("unparseable", "malformed JSON (Expecting property name enclosed in double quotes at "
                                           "column 2)"), ("correct", None), ("unparseable", "no usable out column")]
    assert [origin.rsplit(":", 1)[1] for origin, _, _ in graded] == ["1", "2", "3", "4"]
