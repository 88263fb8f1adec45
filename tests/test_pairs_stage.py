"""Stage pairs end to end on the shared credit world (tests/credit_world.py): every training set from the credit of
hand-written rollouts whose slips are known, so every pair's cut, chosen side and coverage is known in advance."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml
from credit_world import SEED  # fixtures: world, served, runs

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.card import PARTS
from mathfactory.tasks.core.records import Problem, Rollout, Verdict
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.core.strategies import STRATEGIES
from mathfactory.tasks.pairs import DATASETS, PairsConfig, build_all

# --- the pairs stage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_dataset_lands_with_its_marker(runs, world, strategy):
    run = runs(strategy)
    for name in DATASETS:
        assert run.marker(name)["rows"] == len(run.datasets[name]), name
    sft = run.datasets["sft"]
    assert sorted(e.problem_id for e in sft) == sorted(world.train)
    assert all(e.completion == formatting.completion(world.train[e.problem_id].solution) for e in sft)
    assert run.marker("sft")["metrics"]["skipped"] == {"not_train": 1}
    wrong_ids = {r.rollout_id for r in world.rollouts if r.rollout_id in world.slip}
    solved = [pid for pid in world.train if pid != world.unsolved]
    outcome = run.datasets["dpo_outcome"]
    n_wrong = {pid: sum(r.rollout_id in wrong_ids for r in world.of(pid)) for pid in world.train}
    # The default chosen side is the reference (D_syn): one per problem, the never-solved one's included.
    assert len(outcome) == sum(min(PairsConfig().outcome_n, n) for n in n_wrong.values())
    for pairs in (outcome, run.datasets["dpo_edit"]):
        assert all(x.chosen == formatting.completion(world.train[x.problem_id].solution) and x.chosen_rollout_id is None
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
        reference = formatting.completion(world.train[r.problem_id].solution)
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
def test_the_max_drop_pit_set_needs_linear_credit_and_finds_the_slip(runs, world, strategy):
    run = runs(strategy)
    pairs, metrics = run.datasets["dpo_step_cut_max_drop"], run.marker("dpo_step_cut_max_drop")["metrics"]
    if strategy != "linear":  # scan and binary stop probing at a step's first success: no advantages to compare
        assert not pairs and metrics["skipped"] == {"needs_linear_credit": len(run.credits)}
        return
    # Q is 1 before the slip and 0 from it, so the biggest drop is the first zero: the same cut as dpo_step_cut.
    assert {x.rejected_rollout_id: (x.pit_index, x.rejected) for x in pairs} == {
        x.rejected_rollout_id: (x.pit_index, x.rejected) for x in run.datasets["dpo_step_cut"]}
    assert {x.rejected_rollout_id: x.pit_index for x in pairs} == {
        r.rollout_id: world.slip[r.rollout_id] for r in world.creditable_wrong()}


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
        elif name == "dpo_step_cut_max_drop":  # binary credit: no max-drop pits (its own test)
            assert not ids
        else:
            assert ids and ids <= set(first), name
    assert {x.problem_id for x in run.datasets["dpo_step_cut"]} == set(first)


def test_every_set_explains_itself_in_a_dataset_card(runs, tmp_path):
    """README.md beside each set's parts, in the Hugging Face card format: `datasets` reads its front matter (the
    parts as the train split, the columns as features) and gets the rows the lake holds."""
    run = runs("binary")
    folder = {name: Path(run.lake.root, "runs", run.run_id, name) for name in DATASETS}
    for name, record in DATASETS.items():
        card = (folder[name] / "README.md").read_text()
        _, front, body = card.split("---\n", 2)
        meta = yaml.safe_load(front)
        assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": PARTS}]}]
        assert [f["name"] for f in meta["dataset_info"]["features"]] == [f.name for f in fields(record)]
        marker = run.marker(name)
        assert f"| rows | {marker['rows']} |" in body and f"| distinct problems | {marker['metrics']['problems']} |" in body
        assert run.run_id in body and marker["config_hash"] in body and "chosen: reference" in body  # the config
        assert f"- credit: `file://{folder['sft'].parent / 'credit'}`" in body  # what it was built from

    datasets = pytest.importorskip("datasets")
    for name in ("dpo_step_cut", "stepwise"):
        loaded = datasets.load_dataset(str(folder[name]), cache_dir=str(tmp_path / "hf"))
        assert list(loaded) == ["train"]
        assert sorted(loaded["train"].to_list(), key=str) == sorted((asdict(x) for x in run.datasets[name]), key=str)
