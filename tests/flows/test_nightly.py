"""The nightly refresh under Prefect's engine (the session's test API): seed files arriving over three nights,
a failed night, the watermark in the lake; and the storage helpers it rests on."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from support import TINY_PRESET, seed_rows, tiny_policy
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.config import ConfigError, load_preset
from mathfactory.flows.nightly import nightly
from mathfactory.tasks.incoming import watermark_key
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.stage import Run
from mathfactory.tasks.storage import Lake, list_files, write_file_rows

cli = CliRunner(env={"COLUMNS": "400"})


def lake_snapshot(lake: Lake) -> dict[str, object]:
    """Every file under runs/ with its mtime, and every marker's content: what 'untouched' means."""
    files = lake.fs.find(f"{lake.root}/runs")
    return {p: (lake.fs.info(p)["mtime"], lake.fs.cat(p) if p.endswith(".json") else None) for p in files}


def test_state_documents_and_folder_listing_round_trip(tmp_path):
    lake = Lake("memory://nightly-state")
    assert lake.read_state("nightly/x") is None
    lake.write_state("nightly/x", {"last_date": "2026-11-01", "files": {}})
    assert lake.read_state("nightly/x") == {"last_date": "2026-11-01", "files": {}}

    folder = tmp_path / "incoming"
    assert list_files(str(folder), (".jsonl",)) == {}  # not there yet: nothing has arrived
    folder.mkdir()
    write_file_rows(str(folder / "a.jsonl"), seed_rows(0, 2))
    (folder / "notes.txt").write_text("not seed data")
    (folder / "_tmp-upload.jsonl").write_text("{}\n")  # a write in progress
    (folder / "sub").mkdir()
    before = list_files(str(folder), (".jsonl", ".parquet"))
    assert list(before) == [str(folder / "a.jsonl")]
    os.utime(folder / "a.jsonl", (1, 1))  # replaced: same name, new content stamp
    write_file_rows(str(folder / "a.jsonl"), seed_rows(0, 3))
    assert list_files(str(folder), (".jsonl",))[str(folder / "a.jsonl")] != before[str(folder / "a.jsonl")]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    """An existing model for the refresh to sample with (trained once)."""
    return tiny_policy(tmp_path_factory.mktemp("policy"))


def test_a_nightly_needs_an_existing_policy(prefect_api, tmp_path):
    cfg = load_preset(str(TINY_PRESET), [f"lake={tmp_path}"])
    with pytest.raises(ConfigError, match="policy.pretrained is not set"):
        nightly(config=cfg, date="2026-11-01")
    result = cli.invoke(app, ["nightly", "--preset", str(TINY_PRESET), "--lake", str(tmp_path)])
    assert result.exit_code == 2 and "policy.pretrained" in result.output
    assert Lake(str(tmp_path)).runs() == [] and Lake(str(tmp_path)).read_state(watermark_key("tiny")) is None


def test_three_nights_process_only_new_files_and_a_failed_night_leaves_the_watermark(
        prefect_api, policy_dir, tmp_path):
    lake_dir, incoming = tmp_path / "lake", tmp_path / "lake" / "incoming"
    incoming.mkdir(parents=True)
    model = tmp_path / "model"  # the path the config names; moved away below to make a night fail
    shutil.copytree(policy_dir, model)
    cfg = load_preset(str(TINY_PRESET), [f"lake={lake_dir}", f"policy.pretrained={model}"])
    lake, key = Lake(str(lake_dir)), watermark_key(cfg.name)

    # Night 1: two files (JSONL with a broken line, and Parquet) -> one dated run over exactly their rows.
    (incoming / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seed_rows(0, 3)) + "{broken\n")
    write_file_rows(str(incoming / "b.parquet"), seed_rows(10, 2))
    first = nightly(config=cfg, date="2026-11-01")
    assert first["status"] == "refreshed" and "-2026-11-01-" in first["run_id"]
    assert first["files"] == [str(incoming / "a.jsonl"), str(incoming / "b.parquet")]
    stages = lake.stages(first["run_id"])
    assert stages["problems"]["rows"] == 5 and stages["problems"]["quarantined"] == 1
    assert stages["policy"]["metrics"]["pretrained"] == str(model)
    assert stages["verdicts"]["rows"] == 5 * cfg.sample.n
    mark = lake.read_state(key)
    assert mark["last_date"] == "2026-11-01" and set(mark["files"]) == set(first["files"])
    # A data refresh: no model stage ran, and the night says so (the tiny preset trains no method).
    assert first["skipped"] == {"eval_sft": "evaluation is opt-in and off for this run (train=false)"}
    assert mark["nights"]["2026-11-01"]["skipped"] == first["skipped"] and "eval_sft" not in stages
    night1 = lake_snapshot(lake)

    # The same night again: nothing to do, nothing written.
    again = nightly(config=cfg, date="2026-11-01")
    assert again["status"] == "already done" and again["run_id"] == first["run_id"]
    assert lake.runs() == [first["run_id"]] and lake_snapshot(lake) == night1

    # Night 2: nothing new arrived -> quick, says so, no run.
    started = time.monotonic()
    quiet = nightly(config=cfg, date="2026-11-02")
    assert quiet == {"date": "2026-11-02", "status": "nothing new", "run_id": None, "files": []}
    assert time.monotonic() - started < 15
    assert lake.runs() == [first["run_id"]] and lake.read_state(key)["last_date"] == "2026-11-02"

    # Night 3: one more file, but the model is missing: the run fails and the watermark stays put.
    write_file_rows(str(incoming / "c.jsonl"), seed_rows(20, 2))
    before = lake.read_state(key)
    model.rename(tmp_path / "model-away")
    with pytest.raises(Exception, match="no such directory"):
        nightly(config=cfg, date="2026-11-03")
    assert lake.read_state(key) == before
    (failed_run,) = set(lake.runs()) - {first["run_id"]}
    assert "verdicts" not in lake.stages(failed_run)

    # The model is back: the rerun finishes the same partition over only the new file, once.
    (tmp_path / "model-away").rename(model)
    third = nightly(config=cfg, date="2026-11-03")
    assert third["status"] == "refreshed" and third["run_id"] == failed_run and "-2026-11-03-" in failed_run
    assert third["files"] == [str(incoming / "c.jsonl")]
    assert lake.stages(failed_run)["problems"]["rows"] == 2
    assert lake.stages(failed_run)["verdicts"]["rows"] == 2 * cfg.sample.n
    mark = lake.read_state(key)
    assert mark["last_date"] == "2026-11-03" and mark["files"][str(incoming / "c.jsonl")]["run_id"] == failed_run
    assert {p: v for p, v in lake_snapshot(lake).items() if p in night1} == night1  # old partition untouched
    assert sorted(lake.runs()) == sorted([first["run_id"], failed_run])


def test_a_problem_repeated_on_a_later_night_is_dropped_and_counted(prefect_api, policy_dir, tmp_path):
    lake_dir, incoming = tmp_path / "lake", tmp_path / "lake" / "incoming"
    incoming.mkdir(parents=True)
    cfg = load_preset(str(TINY_PRESET), [f"lake={lake_dir}", f"policy.pretrained={policy_dir}"])
    lake = Lake(str(lake_dir))
    write_file_rows(str(incoming / "a.jsonl"), seed_rows(0, 3))
    first = nightly(config=cfg, date="2026-11-01")["run_id"]
    repeat = {**seed_rows(1, 1)[0], "question": seed_rows(1, 1)[0]["question"].upper()}  # night 1's, in capitals
    write_file_rows(str(incoming / "b.jsonl"), [repeat, *seed_rows(40, 2)])
    second = nightly(config=cfg, date="2026-11-02")["run_id"]
    (dropped,) = lake.read_quarantine(second, "problems")
    night1 = {p.question: p.problem_id for p in Run(lake=str(lake_dir), run_id=first).read(PROBLEMS)}
    assert dropped.reason == f"duplicate: same question as {first} problem {night1[seed_rows(1, 1)[0]['question']]}"
    stage = lake.stages(second)["problems"]
    assert (stage["rows"], stage["quarantined"]) == (2, 1)
    assert stage["metrics"]["gates"]["dropped"]["duplicate"] == 1
    assert stage["metrics"]["gates"]["earlier_problems"] == 3
    assert lake.stages(second)["verdicts"]["rows"] == 2 * cfg.sample.n  # the repeat is never sampled
