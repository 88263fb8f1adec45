"""The pipeline flow under Prefect's own engine (a test harness API), on a tiny config in a local lake,
driven through the `mathfactory` CLI as a user would."""

import functools
import importlib
import itertools
import json
import re
import shutil
import time

import pytest
from prefect.artifacts import Artifact
from support import TINY_PRESET, toy_training_sets
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.config import load_preset
from mathfactory.flows.pipeline import pipeline
from mathfactory.tasks.core.records import (
    VERDICT_REASONS,
    PreferencePair,
    Problem,
    Rollout,
    SFTExample,
    Verdict,
)
from mathfactory.tasks.pairs import DATASETS
from mathfactory.tasks.storage import Lake

cli = CliRunner(env={"COLUMNS": "400"})  # rich wraps error panels at the terminal width


@pytest.fixture(scope="module")
def run(prefect_api, tmp_path_factory):
    """One tiny run through `mathfactory run`."""
    lake = str(tmp_path_factory.mktemp("lake"))
    result = cli.invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", lake])
    assert result.exit_code == 0, result.output
    return load_preset(str(TINY_PRESET), [f"lake={lake}"]), result.output


def test_every_stage_lands_with_consistent_rows(run):
    cfg, output = run
    lake, run_id = Lake(cfg.lake), cfg.run_id()
    stages = lake.stages(run_id)
    assert set(stages) == {"problems", "policy", "rollouts", "verdicts", "credit", *DATASETS, "eval_sft"}
    assert stages["problems"]["rows"] == 96 + 16
    assert stages["rollouts"]["rows"] == stages["verdicts"]["rows"] == 2 * 2 * 6
    rollouts = list(lake.read(run_id, "rollouts", Rollout))
    verdicts = list(lake.read(run_id, "verdicts", Verdict))
    assert {r.rollout_id for r in rollouts} == {v.rollout_id for v in verdicts}
    assert len({r.rollout_id for r in rollouts}) == len(rollouts)
    # ids follow content and seed, not where the lake is: the policy is named by its run, not its path
    assert {r.policy for r in rollouts} == {f"runs/{run_id}/policy"}
    assert all(v.reason in VERDICT_REASONS for v in verdicts)
    reasons = stages["verdicts"]["metrics"]["reasons"]
    assert sum(reasons.values()) == len(verdicts)
    assert run_id in output and "verdicts by reason" in output  # the end-of-run report


def test_run_publishes_its_summary_to_the_prefect_ui(run):
    cfg, _ = run
    artifact = Artifact.get(f"mathfactory-{cfg.run_id()}")
    assert artifact is not None and artifact.type == "markdown"
    assert "| verdicts | 24 |" in artifact.data and "### verdicts by reason" in artifact.data


def test_rerun_skips_every_stage(run):
    cfg, _ = run
    lake, run_id = Lake(cfg.lake), cfg.run_id()
    before = lake.stages(run_id)
    parts = {p: lake.fs.info(p)["mtime"] for p in lake.fs.glob(f"{lake.root}/runs/{run_id}/*/part-*.parquet")}
    assert pipeline(config=cfg)["run_id"] == run_id
    assert lake.stages(run_id) == before
    assert {p: lake.fs.info(p)["mtime"] for p in parts} == parts


def materializations(lake: Lake, run_id: str, expected: int, timeout_s: float = 30) -> dict[str, dict]:
    """Asset key -> {state, upstream keys, metadata} of every asset of run `run_id` the Prefect API holds (events
    are written asynchronously: polled until `expected` keys are there)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    prefix = lake.stage_url(run_id, "-")[:-1]  # {lake}/runs/{run_id}/
    names = ["prefect.asset.materialization.succeeded", "prefect.asset.materialization.failed"]
    query = EventFilter(event=EventNameFilter(name=names), resource=EventResourceFilter(id_prefix=[prefix]))
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, dict] = {}
        with get_client(sync_client=True) as client:
            page = client.read_events(query, limit=50)
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(page.next_page)
                events += page.events
        for e in events:
            assert e.resource.id not in found, f"{e.resource.id} materialized twice"
            upstream = {r.id for r in e.related if r.role == "asset"}
            found[e.resource.id] = {"state": e.event.rsplit(".", 1)[1], "upstream": upstream, "metadata": e.payload}
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_every_stage_is_a_prefect_asset_with_what_it_read_upstream(run):
    """Each committed stage materialized once (the rerun above materialized nothing), keyed by its lake URL, its
    upstream the stages it read, its metadata the marker's figures."""
    cfg, _ = run
    lake, run_id = Lake(cfg.lake), cfg.run_id()
    stages = lake.stages(run_id)
    url = functools.partial(lake.stage_url, run_id)
    assets = materializations(lake, run_id, len(stages))
    assert set(assets) == {url(s) for s in stages} and url("verdicts") == f"file://{cfg.lake}/runs/{run_id}/verdicts"
    upstream = {key.rsplit("/", 1)[1]: {u.rsplit("/", 1)[1] for u in a["upstream"]} for key, a in assets.items()}
    assert all(u.startswith(url("-")[:-1]) for a in assets.values() for u in a["upstream"])
    sampled = {"problems", "rollouts", "verdicts", "credit"}
    assert upstream == {"problems": set(), "policy": {"problems"}, "rollouts": {"problems", "policy"},
                        "verdicts": {"problems", "rollouts"}, "credit": {"problems", "rollouts", "verdicts", "policy"},
                        **{name: sampled for name in DATASETS}, "eval_sft": {"problems", "policy"}}
    for stage, marker in stages.items():
        meta = assets[url(stage)]["metadata"]
        assert assets[url(stage)]["state"] == "succeeded"
        assert (meta["run_id"], meta["config_hash"], meta["schema_version"]) == (
            run_id, marker["config_hash"], marker["schema_version"])
        assert meta.get("rows") == (marker["rows"] if marker["record"] else None), stage
    assert assets[url("policy")]["metadata"]["kind"] == "model"


def test_sharded_stages_report_their_progress(run):
    cfg, _ = run
    for stage, shards in (("rollouts", 2), ("verdicts", 2), ("credit", 2)):
        artifact = Artifact.get(f"{cfg.run_id()}-{stage}-progress")
        assert artifact is not None and artifact.type == "progress", stage
        assert float(artifact.data) == 100.0 and artifact.description == f"{stage}: {shards} of {shards} shards finished"


def test_ls_and_show_read_the_lake(run):
    cfg, _ = run
    run_id = cfg.run_id()
    listed = cli.invoke(app, ["ls", "--lake", cfg.lake])
    assert listed.exit_code == 0 and run_id in listed.output and "verdicts (24)" in listed.output
    shown = cli.invoke(app, ["show", run_id, "verdicts", "--lake", cfg.lake, "-n", "2"])
    assert shown.exit_code == 0 and shown.output.count("rollout_id") == 2 and "reasons" in shown.output
    missing = cli.invoke(app, ["show", run_id, "no-such-stage", "--lake", cfg.lake])
    assert missing.exit_code != 0 and "not a finished stage" in missing.output


def test_seed_files_and_a_pretrained_policy(run, tmp_path):
    """The shape the nightly refresh uses: new seed files as problems, sampled by an existing policy."""
    cfg, _ = run
    seed = tmp_path / "seed.jsonl"
    rows = [{"question": f"Ava has {i} apples. Ava finds 2 more apples. How many apples does Ava have now?",
             "answer": f"Ava finds 2, so {i}+2=<<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(5)]
    seed.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    trained = Lake(cfg.lake).local_dir(cfg.run_id(), "policy")
    nightly = cfg.model_copy(update={
        "problems": cfg.problems.model_copy(update={"source": "files", "files": [str(seed)]}),
        "policy": cfg.policy.model_copy(update={"pretrained": str(trained)}),
    })
    run_id = pipeline(config=nightly)["run_id"]
    stages = Lake(cfg.lake).stages(run_id)
    assert stages["problems"]["rows"] == 5 and stages["problems"]["quarantined"] == 1
    assert stages["policy"]["metrics"]["pretrained"] == str(trained)
    assert stages["verdicts"]["rows"] == 5 * nightly.sample.n  # only the train split exists
    # Nothing to evaluate on: skipped with why, and the run completes.
    assert "eval_sft" not in stages and Lake(cfg.lake).skipped(run_id)["eval_sft"]["reason"] == \
        "no test problems to evaluate on (the run's problems: 5 train)"
    # Lineage: the seed file upstream of the problems, the earlier run's model upstream of the policy.
    lake = Lake(cfg.lake)
    assets = materializations(lake, run_id, len(stages))
    assert assets[lake.stage_url(run_id, "problems")]["upstream"] == {f"file://{seed}"}
    assert assets[lake.stage_url(run_id, "policy")]["upstream"] == {lake.stage_url(cfg.run_id(), "policy")}


@pytest.mark.parametrize("source", ["gsm8k", "math500"])
def test_the_real_test_sets_flow_through_every_stage(run, shared_data, source):
    """GSM8K (both splits) and MATH500 (a test set: evaluated, not trained on) from ../shared/data, sampled by the
    tiny run's policy. It solves none of them; what is checked is that every row gets through, graded against the
    data set's own answer, and evaluated by the data set's own stages (GSM8K step counts, MATH levels/subjects)."""
    cfg, _ = run
    trained = str(Lake(cfg.lake).local_dir(cfg.run_id(), "policy"))
    real = cfg.model_copy(update={
        "problems": cfg.problems.model_copy(update={"source": source, "path": str(shared_data / source),
                                                    "n_train": 4, "n_test": 8}),
        "policy": cfg.policy.model_copy(update={"pretrained": trained}),
    })
    run_id = pipeline(config=real)["run_id"]
    lake = Lake(cfg.lake)
    domain = importlib.import_module(f"mathfactory.tasks.domains.{source}")
    splits = ["train", "test"] if source == "gsm8k" else ["test"]
    expected = {s: list(itertools.islice(domain.load(s, str(shared_data / source)), 4 if s == "train" else 8))
                for s in splits}
    problems = {p.problem_id: p for p in lake.read(run_id, "problems", Problem)}
    assert set(problems) == {p.problem_id for rows in expected.values() for p in rows}

    verdicts = list(lake.read(run_id, "verdicts", Verdict))
    sampled = sum(min(len(rows), cfg.sample.problems_per_split) for rows in expected.values())
    assert len(verdicts) == sampled * cfg.sample.n and all(v.reason in VERDICT_REASONS for v in verdicts)
    assert all(v.gold == problems[v.problem_id].answer for v in verdicts)

    evaluated = lake.stages(run_id)["eval_sft"]["metrics"]
    assert evaluated["n"] == 8 and set(evaluated["by_level"]) == {p.level for p in expected["test"]}
    assert sum(b["n"] for b in evaluated["by_level"].values()) == 8


METHODS = ["rft", "af_rft", "dpo", "step_dpo", "edit_dpo"]


def test_every_method_is_trained_evaluated_and_compared_a_small_set_skipped_and_a_failed_one_named(run):
    """The tiny run's data with toy training sets in place of its tiny ones (a 4-step policy solves nothing),
    except dpo_edit: edit_dpo's set (a reference pair per problem) is smaller than a batch, so it is skipped with
    its rows and the minimum; dpo's trainer is given an argument TRL does not know, a genuine failure that fails
    the run naming it. The other methods still train and are evaluated."""
    cfg, _ = run
    sets = [f"train.methods={json.dumps(METHODS)}", *(f"train.trl_args.{m}.max_steps=2" for m in METHODS),
            "train.trl_args.dpo.no_such_argument=1"]
    full = load_preset(str(TINY_PRESET), [f"lake={cfg.lake}", *sets])
    lake, src, run_id = Lake(cfg.lake), cfg.run_id(), full.run_id()
    for stage in ("problems", "policy", "rollouts", "verdicts", "credit", *DATASETS):
        shutil.copytree(f"{lake.root}/runs/{src}/{stage}", f"{lake.root}/runs/{run_id}/{stage}")
    sft, pairs = toy_training_sets([p for p in lake.read(run_id, "problems", Problem) if p.split == "train"])
    for name, cls, rows in (("rft", SFTExample, sft), ("rft_advantage", SFTExample, sft[:40]),
                            ("dpo_outcome", PreferencePair, pairs), ("dpo_step_cut", PreferencePair, pairs)):
        shutil.rmtree(f"{lake.root}/runs/{run_id}/{name}")
        lake.write_part(run_id, name, 0, cls, rows)
        lake.commit(run_id, name, cls)

    result = cli.invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", cfg.lake,
                              *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 1, result.output
    assert "training failed for dpo (the rest finished)" in result.output and "no_such_argument" in result.output
    edit_rows = lake.marker(run_id, "dpo_edit")["rows"]
    assert 0 < edit_rows < 8
    why = f"dpo_edit has {edit_rows} rows, fewer than one batch of 8"
    skipped = lake.skipped(run_id)
    assert list(skipped) == ["train_edit_dpo"]
    assert {k: skipped["train_edit_dpo"][k] for k in ("reason", "rows", "minimum")} == {
        "reason": why, "rows": edit_rows, "minimum": 8}
    assert re.search(rf"train_edit_dpo\s*│\s*{why}\s*│\s*{edit_rows}\s*│\s*8", result.output)  # the report
    stages = lake.stages(run_id)
    trained = [m for m in METHODS if m not in ("dpo", "edit_dpo")]
    assert {f"train_{m}" for m in trained} <= set(stages) and not {"train_dpo", "train_edit_dpo"} & set(stages)
    assert {f"eval_{m}" for m in ["sft", *trained]} <= set(stages)
    assert all(stages[f"train_{m}"]["metrics"]["steps"] == 2 for m in trained)
    assert stages["train_af_rft"]["metrics"]["train_rows"] == 40
    for m in ["sft", *trained]:
        assert stages[f"eval_{m}"]["rows"] == 2 * 4  # 4 test problems per education stage
        assert re.search(rf"\b{m}\b.*%", result.output), f"no {m} row in the comparison table"
    listed = cli.invoke(app, ["ls", "--lake", cfg.lake])
    assert "train_step_dpo" in listed.output and "eval_step_dpo" in listed.output
    assert "skipped: train_edit_dpo" in listed.output
    shown = cli.invoke(app, ["show", run_id, "train_edit_dpo", "--lake", cfg.lake])
    assert shown.exit_code != 0 and f"skipped, {why}" in shown.output
    # Lineage: training sets -> models -> evaluations; the failed training is a failed materialization, the
    # skipped one none.
    url = functools.partial(lake.stage_url, run_id)
    assets = materializations(lake, run_id, 2 * len(trained) + 2)  # + train_dpo (failed) + eval_sft
    assert assets[url("train_dpo")]["state"] == "failed" and url("eval_dpo") not in assets
    assert url("train_edit_dpo") not in assets
    assert assets[url("train_af_rft")]["upstream"] == {url("policy"), url("rft_advantage")}
    assert assets[url("train_step_dpo")]["upstream"] == {url("policy"), url("dpo_step_cut")}
    assert assets[url("eval_step_dpo")]["upstream"] == {url("problems"), url("train_step_dpo")}
    assert assets[url("train_rft")]["metadata"]["steps"] == 2
